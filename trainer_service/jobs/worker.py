"""A job's worker process: `python -m trainer_service.jobs.worker --job-dir DIR [--db PATH | --events PATH]`.

The local executor launches it (under torchrun for several processes); the slurm and kubernetes executors run the
same module under torchrun on each node. It reads the plan written next to the checkpoints, trains through the
engine, and rank 0 appends progress to the SQLite event log (local) or to the job's events.jsonl (cluster nodes).
It stops cleanly (checkpoint, then exit 0) on SIGTERM, when
its parent or the server it belongs to dies, and never trains a job another live worker holds the lock for.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import importlib
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from trainer_service.jobs.failure import exception_reason
from trainer_service.jobs.layout import EXIT_LOCKED, EXIT_STOP_DEADLINE, LOCK_FILE, JobDir
from trainer_service.jobs.summary import JobSummary
from trainer_service.store import append_event, connect
from trainer_service.training.api import (
    CheckpointSaved,
    CorpusRef,
    EventSink,
    TrainingEvent,
    TrainingOutcome,
    TrainingPlan,
)
from trainer_service.training.sinks import JsonLinesSink

PR_SET_PDEATHSIG = 1


class StopFlag:
    """Set by SIGTERM/SIGINT, by the parent or server dying; the engine polls it as should_stop.

    With a deadline, a process still alive that long after the stop request exits hard: an orphan whose
    engine hangs (no server is left to SIGKILL it) must not hold the job lock forever.
    """

    def __init__(self, deadline_seconds: float | None = None) -> None:
        self._event = threading.Event()
        self.reason = ""
        self._deadline = deadline_seconds

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            print(f"worker: stopping ({reason})", file=sys.stderr, flush=True)
            if self._deadline is not None:
                timer = threading.Timer(self._deadline, _exit_hard, [reason, self._deadline])
                timer.daemon = True
                timer.start()
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


def _exit_hard(reason: str, seconds: float) -> None:
    print(f"worker: still running {seconds:.0f}s after stopping ({reason}); exiting", file=sys.stderr, flush=True)
    os._exit(EXIT_STOP_DEADLINE)


def die_with_parent(stop: StopFlag) -> None:
    """Linux: ask the kernel for SIGTERM when our parent dies, so orphans checkpoint and exit."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        stop.set("parent process already gone")


def _start_time(pid: int) -> str | None:
    """The process's start time from /proc (guards against pid reuse); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"


def watch_server(pid: int, stop: StopFlag, interval: float = 1.0) -> None:
    """Stop when the server process that launched the job goes away (torchrun ranks' parent is torchrun)."""
    started = _start_time(pid)

    def loop() -> None:
        while not stop.wait(interval):
            if started is None or _start_time(pid) != started:
                stop.set(f"server process {pid} is gone")
                return

    threading.Thread(target=loop, name="server-watchdog", daemon=True).start()


def acquire_job_lock(job_dir: Path, stop: StopFlag, timeout: float) -> IO[bytes] | None:
    """An exclusive flock on the job; waits for an orphaned worker to checkpoint and let go."""
    handle = open(job_dir / LOCK_FILE, "ab")  # noqa: SIM115 - held for the life of the process
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if stop() or time.monotonic() > deadline:
                handle.close()
                return None
            time.sleep(0.2)


class WriteTimer:
    """Fills CheckpointSaved.write_seconds when the engine did not time it.

    Without the engine's own timing: the time since its previous event, an upper bound that is close because
    the engine reports checkpoints right after the evaluation or step that triggered them.
    """

    def __init__(self) -> None:
        self._last_emit = time.monotonic()

    def stamp(self, event: TrainingEvent) -> TrainingEvent:
        now, last = time.monotonic(), self._last_emit
        self._last_emit = now
        if isinstance(event, CheckpointSaved) and event.write_seconds is None:
            return event.model_copy(update={"write_seconds": now - last})
        return event


class DbEventSink:
    """Rank 0's sink on the trainer's node: every event becomes a row in the job's event log."""

    def __init__(self, db: Path, job_id: str) -> None:
        self._conn = connect(db)
        self.job_id = job_id
        row = self._conn.execute("SELECT best_val_loss FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        self._summary = JobSummary(row[0] if row is not None else None)
        self._timer = WriteTimer()

    def emit(self, event: TrainingEvent) -> None:
        event = self._timer.stamp(event)
        payload, update = self._summary.row(event)
        try:
            append_event(self._conn, self.job_id, event.kind, payload, update)
        except sqlite3.Error as exc:  # losing one event beats losing the run
            print(f"worker: could not record {event.kind} event: {exc}", file=sys.stderr, flush=True)


class FileEventSink:
    """Rank 0's sink on a cluster node: JSON lines appended to the job's events.jsonl on shared storage.

    The trainer follows that file into its event log; a database over a network filesystem would not be safe.
    """

    def __init__(self, path: Path) -> None:
        self._lines = JsonLinesSink(path)
        self._timer = WriteTimer()

    def emit(self, event: TrainingEvent) -> None:
        try:
            self._lines.emit(self._timer.stamp(event))
        except OSError as exc:  # losing one event beats losing the run
            print(f"worker: could not record {event.kind} event: {exc}", file=sys.stderr, flush=True)


class NullSink:
    def emit(self, event: TrainingEvent) -> None:
        pass


def make_sink(args: argparse.Namespace, job_id: str) -> EventSink:
    if args.db:
        return DbEventSink(args.db, job_id)
    return FileEventSink(args.events) if args.events else NullSink()


def load_engine(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "run_training")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-dir", type=Path, required=True, help="holds plan.json, corpus.json, checkpoints/")
    events = parser.add_mutually_exclusive_group()
    events.add_argument("--db", type=Path, help="SQLite event log to append to (rank 0, the trainer's node)")
    events.add_argument("--events", type=Path, help="JSON-lines event log to append to (rank 0, cluster nodes)")
    parser.add_argument("--engine", default="trainer_service.training.loop:run_training")
    parser.add_argument("--server-pid", type=int, help="stop when this process dies")
    parser.add_argument("--lock-timeout", type=float, default=120.0,
                        help="seconds to wait for a previous worker of the job to let go")
    parser.add_argument("--stop-deadline", type=float, default=180.0,
                        help="seconds after a stop request before the process exits regardless")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = StopFlag(args.stop_deadline)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.set(f"signal {signal.Signals(signum).name}"))
    die_with_parent(stop)
    if args.server_pid:
        watch_server(args.server_pid, stop)
    job_dir = JobDir(args.job_dir)
    plan = TrainingPlan.model_validate_json(job_dir.plan.read_text(encoding="utf-8"))
    corpus = CorpusRef.model_validate_json(job_dir.corpus.read_text(encoding="utf-8"))
    rank = int(os.environ.get("RANK", "0"))
    lock = None
    if rank == 0:
        lock = acquire_job_lock(args.job_dir, stop, args.lock_timeout)
        if lock is None:
            print(f"worker: job {plan.job_id} is locked by another live worker", file=sys.stderr, flush=True)
            return EXIT_LOCKED
    sink = make_sink(args, plan.job_id) if rank == 0 else NullSink()
    try:
        outcome: TrainingOutcome = load_engine(args.engine)(plan, corpus, args.job_dir, sink, stop)
    except Exception as exc:
        job_dir.write_failure(exception_reason(exc))  # the job's error; the traceback below goes to worker.log
        raise
    if rank == 0:
        job_dir.write_outcome(outcome)
    print(f"worker: finished at step {outcome.final_step} (stopped early: {outcome.stopped_early})",
          file=sys.stderr, flush=True)
    del lock
    return 0


if __name__ == "__main__":
    sys.exit(main())
