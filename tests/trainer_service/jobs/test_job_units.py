"""Pieces tested directly: consistent checkpoint snapshots, the job lock, exit descriptions, the event log."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chargpt.core.checkpoint import TrainingInfo, save_checkpoint
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT
from chargpt.core.tokenizer import CharTokenizer
from chargpt.errors import NotFoundError
from trainer_service.executors.local import describe_exit
from trainer_service.jobs.checkpoints import open_snapshot
from trainer_service.jobs.layout import EXIT_LOCKED, EXIT_STOP_DEADLINE
from trainer_service.jobs.worker import StopFlag, acquire_job_lock
from trainer_service.store import Store, append_event, connect
from trainer_service.store_records import QUEUED, RUNNING


def write_checkpoint(job_dir: Path, kind: str, step: int, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=3, n_layer=1, n_head=2, n_embd=16, block_size=8)
    save_checkpoint(job_dir / "checkpoints" / kind, GPT(config), CharTokenizer("abc"), TrainingInfo(step=step))


def test_snapshot_survives_the_checkpoint_being_replaced(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, "latest", step=1, seed=1)
    snapshot = open_snapshot(tmp_path, "")  # no best: falls back to latest
    write_checkpoint(tmp_path, "latest", step=2, seed=2)  # replaced while "downloading"
    try:
        assert snapshot.info.kind == "latest" and snapshot.info.manifest.training.step == 1
        data: dict[str, bytearray] = {}
        for name, offset, chunk in snapshot.chunks(1024):
            assert offset == len(data.setdefault(name, bytearray()))
            data[name] += chunk
        for f in snapshot.files:
            assert hashlib.sha256(bytes(data[f.name])).hexdigest() == f.sha256
        assert snapshot.files[1].sha256 == snapshot.info.manifest.weights.sha256
    finally:
        snapshot.close()
    assert open_snapshot(tmp_path, "latest").info.manifest.training.step == 2
    with pytest.raises(NotFoundError):
        open_snapshot(tmp_path, "best")


def test_job_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    first = acquire_job_lock(tmp_path, StopFlag(), timeout=1)
    assert first is not None
    assert acquire_job_lock(tmp_path, StopFlag(), timeout=0.3) is None  # another holder: give up in time
    stop = StopFlag()
    threading.Timer(0.2, stop.set, ["test"]).start()
    assert acquire_job_lock(tmp_path, stop, timeout=30) is None  # a stop request ends the wait early
    first.close()
    second = acquire_job_lock(tmp_path, StopFlag(), timeout=1)
    assert second is not None
    second.close()


def test_exit_descriptions() -> None:
    assert "SIGKILL" in describe_exit(-signal.SIGKILL) and "out-of-memory" in describe_exit(-signal.SIGKILL)
    assert "code 3" in describe_exit(3)
    assert "lock" in describe_exit(EXIT_LOCKED)


def test_sequences_are_per_job_and_shared_by_writers(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    for job_id in ("a", "b"):
        store._conn.execute("INSERT INTO jobs (job_id, display_name, state, corpus_id, plan, parameter_count, "
                            "created) VALUES (?, '', ?, 'c', '{}', 0, 0)", (job_id, QUEUED))
    worker = connect(tmp_path / "db.sqlite")  # a second connection, as a worker process has
    store.set_state("a", RUNNING, "go", step=0)
    append_event(worker, "a", "progress", {"step": 1}, {"step": 1})
    append_event(worker, "b", "progress", {"step": 1})
    store.set_state("a", QUEUED, "again")
    assert [e.seq for e in store.events_after("a", 0)] == [1, 2, 3]
    assert [e.seq for e in store.events_after("b", 0)] == [1]
    assert store.get_job("a").step == 1 and store.get_job("a").state == QUEUED
    assert [e.job_id for e in store.events_since_id(0)] == ["a", "a", "b", "a"]


def test_a_stopped_worker_that_hangs_exits_at_its_deadline() -> None:
    code = ("import time\nfrom trainer_service.jobs.worker import StopFlag\n"
            "flag = StopFlag(0.5)\nflag.set('test')\ntime.sleep(30)\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])})
    assert result.returncode == EXIT_STOP_DEADLINE and time.monotonic() - started < 10
    assert b"exiting" in result.stderr
