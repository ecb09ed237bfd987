"""`python -m trainer_service.server` as a real process: SIGKILLed mid-job, restarted, the job finishes exactly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import pytest
from trainer_harness import HERE, Trainer, sample_text

from chargpt.v1 import trainer_pb2 as S
from tests.support.procs import free_port, processes_mentioning, start_service, wait_serving
from trainer_service.settings import DEFAULT_ENGINE

pytestmark = pytest.mark.slow


def start_server(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    args = ["--port", str(port), "--data-dir", str(data_dir), "--device", "cpu", "--builtin-corpora", "false",
            "--engine", DEFAULT_ENGINE, "--event-poll-seconds", "0.1", "--worker-stop-timeout-seconds", "30"]
    return start_service("trainer_service.server", args, log, extra_path=[HERE])


async def wait_no_processes(text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while processes_mentioning(text):
        assert time.monotonic() < deadline, f"processes still running for {text}"
        await asyncio.sleep(0.2)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find worker processes")
async def test_sigkilled_server_restarts_and_the_job_finishes(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    client = Trainer(data_dir)
    port = free_port()
    server = start_server(data_dir, port, log)
    try:
        await wait_serving(port)
        client.attach(port)
        corpus = (await client.upload(sample_text(2000))).corpus
        job = await client.create_job(corpus.corpus_id, max_steps=60, eval_interval=30, sample_interval=0,
                                      checkpoint_interval=5)
        await client.wait_for(job.job_id, [S.JOB_STATE_RUNNING], timeout=90, min_step=8)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        # The orphaned worker notices (parent-death signal), writes a checkpoint and exits by itself.
        await wait_no_processes(job.job_id, timeout=60)
        await client.stop()

        server = start_server(data_dir, port, log)
        await wait_serving(port)
        client.attach(port)
        done = await client.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED], timeout=120)
        assert done.step == 60
        states = [e.state_changed async for e in client.stub.WatchTrainingJob(
            S.WatchTrainingJobRequest(job_id=job.job_id)) if e.HasField("state_changed")]
        assert [s.state for s in states] == [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_QUEUED,
                                             S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED]
        assert "server restarted" in states[2].message
        # resumed from the checkpoint the orphan wrote when its parent died, not the older periodic one
        resumed_from = int(states[3].message.rsplit("resuming from step ", 1)[1])
        assert resumed_from >= 8
        await client.stop()
        server.send_signal(signal.SIGTERM)  # graceful stop of an idle server
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        print(log.read_text(errors="replace")[-3000:])
