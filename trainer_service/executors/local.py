"""The local executor: each job's workers are child processes on the trainer's own node (torchrun --standalone)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import IO

import trainer_service
from chargpt.core.calibration import CALIBRATION_DIR_ENV
from trainer_service.executors.base import Ended, Executor, LaunchError, RunningJob
from trainer_service.jobs.layout import EXIT_LOCKED, EXIT_STOP_DEADLINE
from trainer_service.settings import TrainerSettings
from trainer_service.store import Store
from trainer_service.store_records import RUNNING
from trainer_service.training.api import TrainingPlan

log = logging.getLogger(__name__)


def device_slots(plan: TrainingPlan) -> list[str]:
    """The devices a job occupies: one per process on CUDA, the device itself elsewhere."""
    if plan.device == "cuda":
        return [f"cuda:{i}" for i in range(plan.num_processes)]
    return [plan.device]


class LocalExecutor(Executor):
    """Today's behaviour: one worker process (or torchrun --standalone) per job, SIGTERM to stop."""

    name = "local"
    reads_trainer_corpora = True

    def __init__(self, settings: TrainerSettings, store: Store) -> None:
        self.settings, self.store = settings, store
        self._logs: dict[str, IO[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def slots(self, plan: TrainingPlan) -> list[str]:
        return device_slots(plan)

    def command(self, plan: TrainingPlan, job_dir: Path) -> list[str]:
        python = self.settings.worker_python or sys.executable
        args = ["--job-dir", str(job_dir), "--db", str(self.store.path), "--engine", self.settings.engine,
                "--server-pid", str(os.getpid()),
                "--lock-timeout", str(self.settings.worker_stop_timeout_seconds + 30),
                "--stop-deadline", str(self.settings.worker_stop_timeout_seconds + 15)]
        if plan.num_processes == 1:
            return [python, "-m", "trainer_service.jobs.worker", *args]
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={plan.num_processes}",
                "-m", "trainer_service.jobs.worker", *args]

    async def launch(self, run: RunningJob) -> None:
        job, plan = run.job, run.plan
        step = run.files.latest_step()
        note = f"running on {plan.device}" + (f", resuming from step {step}" if step else "")
        self.store.set_state(job.job_id, RUNNING, note, step=step, started=job.started or time.time(),
                             finished=None, error="", executor=self.name, cluster_job_id="")
        logfile = open(run.files.log, "ab")  # noqa: SIM115 - handed to the child, closed in wait()
        run.log_offset = logfile.tell()
        logfile.write(f"==== worker start {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
        logfile.flush()
        try:
            run.handle = await asyncio.create_subprocess_exec(
                *self.command(plan, run.job_dir), stdout=logfile, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True, env=worker_env(self.settings))
        except OSError as exc:
            logfile.close()
            raise LaunchError(f"could not start the worker: {exc}") from exc
        self._logs[job.job_id] = logfile
        if run.stop_reason is not None:
            self._signal(run, signal.SIGTERM)

    async def wait(self, run: RunningJob) -> Ended:
        process: asyncio.subprocess.Process = run.handle
        try:
            code = await process.wait()
        finally:
            self._logs.pop(run.job.job_id).close()
        return Ended(code, describe_exit(code))

    def request_stop(self, run: RunningJob) -> None:
        if run.handle is not None:
            self._signal(run, signal.SIGTERM)
            task = asyncio.create_task(self._kill_after(run, self.settings.worker_stop_timeout_seconds))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _signal(run: RunningJob, sig: signal.Signals) -> None:
        """SIGTERM goes to the top process (torchrun forwards it to its ranks); SIGKILL to the whole group."""
        process: asyncio.subprocess.Process | None = run.handle
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig == signal.SIGKILL:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

    async def _kill_after(self, run: RunningJob, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.done.wait(), seconds)
            return
        log.warning("job %s: worker ignored SIGTERM for %.0fs; killing it", run.job.job_id, seconds)
        self._signal(run, signal.SIGKILL)


def worker_env(settings: TrainerSettings) -> dict[str, str]:
    """This environment, with the package root importable in the child wherever it runs from and the
    server's calibration cache (precision auto reads the host's measured timings from it)."""
    env = dict(os.environ)
    env[CALIBRATION_DIR_ENV] = str(settings.resolved_calibration_dir())
    root = str(Path(trainer_service.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def describe_exit(code: int) -> str:
    if code == EXIT_LOCKED:
        return "another worker process still holds this job's lock"
    if code == EXIT_STOP_DEADLINE:
        return "worker did not stop in time after being asked to"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        hint = " (also what the out-of-memory killer sends)" if -code == signal.SIGKILL else ""
        return f"worker was killed by signal {name}{hint}"
    return f"worker exited with code {code}"
