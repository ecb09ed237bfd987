"""The job manager: queues jobs per device, runs each in its own worker process, and records how it ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import trainer_service
from chargpt.core.calibration import CALIBRATION_DIR_ENV
from chargpt.errors import FailedPreconditionError
from trainer_service.checkpoints import list_checkpoints
from trainer_service.events import EventHub
from trainer_service.settings import TrainerSettings
from trainer_service.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    CorpusRecord,
    JobRecord,
    Store,
)
from trainer_service.training.api import CorpusRef, TrainingPlan
from trainer_service.worker import (
    CORPUS_FILE,
    EXIT_LOCKED,
    EXIT_STOP_DEADLINE,
    LOG_FILE,
    OUTCOME_FILE,
    PLAN_FILE,
    read_outcome,
)

log = logging.getLogger(__name__)
TAIL_CHARS = 2000
CANCEL_WAIT_SECONDS = 20.0  # CancelTrainingJob waits this long for the worker's final checkpoint


@dataclass
class RunningJob:
    job: JobRecord
    plan: TrainingPlan
    slots: list[str]
    job_dir: Path
    log_offset: int = 0
    process: asyncio.subprocess.Process | None = None
    stop_reason: str | None = None  # "cancel" or "shutdown"
    done: asyncio.Event = field(default_factory=asyncio.Event)


def device_slots(plan: TrainingPlan) -> list[str]:
    """The devices a job occupies: one per process on CUDA, the device itself elsewhere."""
    if plan.device == "cuda":
        return [f"cuda:{i}" for i in range(plan.num_processes)]
    return [plan.device]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class JobManager:
    """Owns the worker processes; every state change goes through the store (and so the event log)."""

    def __init__(self, settings: TrainerSettings, store: Store, hub: EventHub) -> None:
        self.settings, self.store, self.hub = settings, store, hub
        self.jobs_dir = settings.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._running: dict[str, RunningJob] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._plans: dict[str, TrainingPlan] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong references to fire-and-forget tasks

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def plan(self, job_id: str) -> TrainingPlan:
        if job_id not in self._plans:
            self._plans[job_id] = TrainingPlan.model_validate_json(self.store.get_job(job_id).plan)
        return self._plans[job_id]

    def tokens_per_step(self, job_id: str) -> int:
        plan = self.plan(job_id)
        return plan.batch_size * plan.model.block_size

    def running_process(self, job_id: str) -> asyncio.subprocess.Process | None:
        """The top worker process of a running job (torchrun's for multi-process jobs)."""
        run = self._running.get(job_id)
        return run.process if run is not None else None

    # ---- life cycle

    async def start(self) -> None:
        self._recover()
        self._task = asyncio.create_task(self._schedule_forever())
        self._wake.set()

    def _recover(self) -> None:
        """Jobs a previous server left RUNNING continue from their latest checkpoint (or end if cancelled)."""
        for job in self.store.jobs_in_state(RUNNING):
            if job.cancel_requested:
                self.store.set_state(job.job_id, CANCELLED, "cancelled (server went down while the job was stopping)",
                                     finished=time.time())
            else:
                self.store.set_state(job.job_id, QUEUED, "server restarted; will resume from the latest checkpoint")

    async def stop(self) -> None:
        """Stop scheduling; running workers checkpoint and their jobs go back to QUEUED."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:  # let a launch in progress finish, so its worker is supervised too
            await self._task
        running = list(self._running.values())
        for run in running:
            self._request_stop(run, "shutdown")
        if running:
            await asyncio.wait([asyncio.create_task(r.done.wait()) for r in running],
                               timeout=self.settings.worker_stop_timeout_seconds + 10)
        await self.hub.poll_once()

    # ---- requests

    async def create(self, job_id: str, display_name: str, plan: TrainingPlan, corpus: CorpusRecord) -> JobRecord:
        job_dir = self.job_dir(job_id)
        job_dir.mkdir(parents=True)
        ref = CorpusRef(corpus_id=corpus.corpus_id, name=corpus.name, sha256=corpus.corpus_id, path=Path(corpus.path))
        write_atomic(job_dir / PLAN_FILE, plan.model_dump_json(indent=2))
        write_atomic(job_dir / CORPUS_FILE, ref.model_dump_json(indent=2))
        self._plans[job_id] = plan
        self.store.insert_job(job_id, display_name, corpus.corpus_id, plan.model_dump_json(),
                              plan.model.parameter_count())
        await self.hub.poll_once()
        self._wake.set()
        return self.store.get_job(job_id)

    async def cancel(self, job_id: str) -> JobRecord:
        """Idempotent: finished jobs come back unchanged; a running one checkpoints first."""
        job = self.store.get_job(job_id)
        if job.state in TERMINAL:
            return job
        self.store.update_job(job_id, cancel_requested=True)
        run = self._running.get(job_id)
        if run is None:
            self.store.set_state(job_id, CANCELLED, "cancelled before it started", finished=time.time())
        else:
            self._request_stop(run, "cancel")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(run.done.wait()), CANCEL_WAIT_SECONDS)
        await self.hub.poll_once()
        return self.store.get_job(job_id)

    async def resume(self, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job.state not in (CANCELLED, FAILED):
            raise FailedPreconditionError(f"job {job_id} is {job.state}; only cancelled or failed jobs resume")
        if self.store.get_corpus(job.corpus_id) is None:
            raise FailedPreconditionError(f"corpus {job.corpus_id} of job {job_id} was deleted")
        latest = [c for c in list_checkpoints(self.job_dir(job_id)) if c.kind == "latest"]
        note = f"resumed from step {latest[0].manifest.training.step}" if latest else "restarted from step 0"
        self.store.set_state(job_id, QUEUED, note, cancel_requested=False, error="", finished=None)
        await self.hub.poll_once()
        self._wake.set()
        return self.store.get_job(job_id)

    # ---- scheduling

    async def _schedule_forever(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._launch_ready()
            except Exception:  # a broken job must not stop the queue
                log.exception("scheduling failed")

    async def _launch_ready(self) -> None:
        """Start queued jobs, oldest first, on devices with a free slot; a waiting job reserves its devices."""
        busy: dict[str, int] = {}
        for run in self._running.values():
            for slot in run.slots:
                busy[slot] = busy.get(slot, 0) + 1
        reserved: set[str] = set()
        for job in self.store.jobs_in_state(QUEUED):
            if self._stopping:
                return
            plan = self.plan(job.job_id)
            slots = device_slots(plan)
            if any(s in reserved or busy.get(s, 0) >= self.settings.max_jobs_per_device for s in slots):
                reserved.update(slots)
                continue
            for slot in slots:
                busy[slot] = busy.get(slot, 0) + 1
            await self._launch(job, plan, slots)

    def _command(self, plan: TrainingPlan, job_dir: Path) -> list[str]:
        python = self.settings.worker_python or sys.executable
        args = ["--job-dir", str(job_dir), "--db", str(self.store.path), "--engine", self.settings.engine,
                "--server-pid", str(os.getpid()),
                "--lock-timeout", str(self.settings.worker_stop_timeout_seconds + 30),
                "--stop-deadline", str(self.settings.worker_stop_timeout_seconds + 15)]
        if plan.num_processes == 1:
            return [python, "-m", "trainer_service.worker", *args]
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={plan.num_processes}",
                "-m", "trainer_service.worker", *args]

    async def _launch(self, job: JobRecord, plan: TrainingPlan, slots: list[str]) -> None:
        job_dir = self.job_dir(job.job_id)
        (job_dir / OUTCOME_FILE).unlink(missing_ok=True)
        run = RunningJob(job, plan, slots, job_dir)
        self._running[job.job_id] = run
        latest = [c for c in list_checkpoints(job_dir) if c.kind == "latest"]
        step = latest[0].manifest.training.step if latest else 0
        note = f"running on {plan.device}" + (f", resuming from step {step}" if step else "")
        self.store.set_state(job.job_id, RUNNING, note, step=step, started=job.started or time.time(),
                             finished=None, error="")
        logfile = open(job_dir / LOG_FILE, "ab")  # noqa: SIM115 - handed to the child, closed below
        run.log_offset = logfile.tell()
        logfile.write(f"==== worker start {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
        logfile.flush()
        try:
            run.process = await asyncio.create_subprocess_exec(
                *self._command(plan, job_dir), stdout=logfile, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True, env=self._worker_env())
        except OSError as exc:
            logfile.close()
            self._running.pop(job.job_id, None)
            self.store.set_state(job.job_id, FAILED, f"could not start the worker: {exc}",
                                 error=f"could not start the worker: {exc}", finished=time.time())
            run.done.set()
            return
        finally:
            await self.hub.poll_once()
        if run.stop_reason is not None:
            self._signal(run, signal.SIGTERM)
        self._spawn(self._supervise(run, logfile))

    def _worker_env(self) -> dict[str, str]:
        """This environment, with the package root importable in the child wherever it runs from and the
        server's calibration cache (precision auto reads the host's measured timings from it)."""
        env = dict(os.environ)
        env[CALIBRATION_DIR_ENV] = str(self.settings.resolved_calibration_dir())
        root = str(Path(trainer_service.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def _supervise(self, run: RunningJob, logfile: IO[bytes]) -> None:
        assert run.process is not None
        try:
            code = await run.process.wait()
        finally:
            logfile.close()
            self._running.pop(run.job.job_id, None)
        try:
            state, message = self._final_state(run, code)
            self.store.set_state(run.job.job_id, state, message, error=message if state == FAILED else "",
                                 tokens_per_second=0.0,
                                 finished=time.time() if state in TERMINAL else None)
            log.info("job %s: %s (%s)", run.job.job_id, state, message)
            await self.hub.poll_once()
        finally:
            run.done.set()
            self._wake.set()

    def _final_state(self, run: RunningJob, code: int) -> tuple[str, str]:
        outcome = read_outcome(run.job_dir)
        step = outcome.final_step if outcome else self.store.get_job(run.job.job_id).step
        if code == 0 and outcome is not None and not outcome.stopped_early and outcome.final_step >= run.plan.max_steps:
            return SUCCEEDED, f"finished {outcome.final_step} steps"  # even if a stop request came too late
        if run.stop_reason == "cancel":
            return CANCELLED, f"cancelled at step {step}"
        if run.stop_reason == "shutdown":
            return QUEUED, f"server shutting down at step {step}; will resume from the latest checkpoint"
        if code == 0 and outcome is not None:
            return FAILED, f"worker stopped at step {outcome.final_step} without being asked to (outside signal?)"
        return FAILED, f"{describe_exit(code)}; last output:\n{self._tail(run)}"

    def _tail(self, run: RunningJob) -> str:
        try:
            with open(run.job_dir / LOG_FILE, "rb") as f:
                f.seek(run.log_offset)
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no output)"
        return text[-TAIL_CHARS:].strip() or "(no output)"

    # ---- signals

    def _request_stop(self, run: RunningJob, reason: str) -> None:
        if run.stop_reason != "cancel":
            run.stop_reason = reason
        if run.process is not None:
            self._signal(run, signal.SIGTERM)
            self._spawn(self._kill_after(run, self.settings.worker_stop_timeout_seconds))

    @staticmethod
    def _signal(run: RunningJob, sig: signal.Signals) -> None:
        """SIGTERM goes to the top process (torchrun forwards it to its ranks); SIGKILL to the whole group."""
        if run.process is None or run.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig == signal.SIGKILL:
                os.killpg(run.process.pid, sig)
            else:
                run.process.send_signal(sig)

    async def _kill_after(self, run: RunningJob, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.done.wait(), seconds)
            return
        log.warning("job %s: worker ignored SIGTERM for %.0fs; killing it", run.job.job_id, seconds)
        self._signal(run, signal.SIGKILL)


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
