"""What the slurm and kubernetes executors share: submit, poll the cluster, follow the job's event log."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError

from trainer_service.executors.base import Ended, Executor, LaunchError, RunningJob
from trainer_service.jobs.events import EventHub
from trainer_service.jobs.layout import RUNS_FILE
from trainer_service.jobs.summary import JobSummary
from trainer_service.settings import TrainerSettings
from trainer_service.store import Store
from trainer_service.store_records import QUEUED, RUNNING
from trainer_service.training.api import TrainingEvent

log = logging.getLogger(__name__)
EVENT = TypeAdapter[TrainingEvent](Annotated[TrainingEvent, Field(discriminator="kind")])


@dataclass(frozen=True)
class ClusterStatus:
    """One look at the job in the cluster, in the cluster's own terms plus where that leaves the job."""

    phase: Literal["pending", "running", "ended"]
    state: str  # the cluster's name for it: PENDING, TIMEOUT, ... (Slurm); Pending, Failed, ... (Kubernetes)
    reason: str = ""
    code: int = 0  # once ended: 0 when the workers exited cleanly
    cancelled: bool = False  # ended because the cluster cancelled it (scancel, Job deleted)
    where: str = ""  # nodes or pods it runs on
    requeue: bool = False  # ended, but not for good (preempted): the trainer submits it again, it resumes
    run: int = 0  # how many times the cluster restarted the job (Slurm's RestartCnt): a new value is a new run
    settled: bool = True  # False while a running-phase state still belongs to the run that is ending (COMPLETING)

    def describe(self) -> str:
        return self.state + (f" ({self.reason})" if self.reason and self.reason != "None" else "")


class EventFollower:
    """Copies complete lines of the job's events.jsonl into the event log, each exactly once.

    The byte offset reached is stored with each event in the same transaction, so a restarted trainer
    carries on where the previous one stopped.
    """

    def __init__(self, store: Store, job_id: str, path: Path) -> None:
        self.store, self.job_id, self.path = store, job_id, path
        self._summary = JobSummary(store.get_job(job_id).best_val_loss)

    def poll(self, until: int | None = None) -> int:
        """Copy the complete lines written since the last poll (those that start before byte `until`)."""
        offset = self.store.get_job(self.job_id).events_offset
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        count = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n") or (until is not None and offset >= until):
                break  # the worker is still writing it, or it belongs to a run the trainer has not noted yet
            offset += len(line)
            try:
                event = EVENT.validate_json(line)
            except ValidationError as exc:
                log.warning("job %s: skipping a bad event line: %s", self.job_id, exc)
                self.store.update_job(self.job_id, events_offset=offset)
                continue
            payload, update = self._summary.row(event)
            self.store.append_event(self.job_id, event.kind, payload, {**update, "events_offset": offset})
            count += 1
        return count


def run_start(job_dir: Path, restart: int) -> int | None:
    """Where the events of the job's run after `restart` restarts begin in events.jsonl; None when not recorded."""
    try:
        lines = (job_dir / RUNS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    starts = [offset for count, _, offset in (line.partition(" ") for line in lines) if count == str(restart)]
    return int(starts[-1]) if starts and starts[-1].isdigit() else None


class ClusterExecutor(Executor):
    """Submits each job to a cluster scheduler and follows it until it ends; survives trainer restarts."""

    detach_on_shutdown = True
    cluster = ""  # "Slurm", "Kubernetes"

    def __init__(self, settings: TrainerSettings, store: Store, hub: EventHub) -> None:
        self.settings, self.store, self.hub = settings, store, hub
        self.max_nodes = settings.max_nodes_per_job
        self._tasks: set[asyncio.Task[None]] = set()

    @abstractmethod
    async def submit(self, run: RunningJob) -> str:
        """Hand the job to the cluster; its id there. Raises LaunchError when the cluster refuses it."""

    @abstractmethod
    async def status(self, run: RunningJob) -> ClusterStatus | None:
        """The job as the cluster sees it now; None when the cluster does not know it (any more)."""

    @abstractmethod
    async def cancel(self, run: RunningJob, force: bool) -> None:
        """Ask the workers to checkpoint and stop (force: kill and remove them)."""

    async def requeue_cause(self, run: RunningJob) -> str:
        """Why a job that was running is queued again ("preempted", "requeued"); '' when the cluster cannot say."""
        return ""

    async def launch(self, run: RunningJob) -> None:
        with open(run.files.log, "ab") as f:
            run.log_offset = f.tell()
            f.write(f"==== submitted {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
        try:
            run.handle = await self.submit(run)
        except (OSError, RuntimeError) as exc:
            raise LaunchError(f"could not submit the job to {self.cluster}: {exc}") from exc
        self.store.set_state(run.job.job_id, QUEUED, f"submitted to {self.cluster} as job {run.handle}",
                             executor=self.name, cluster_job_id=run.handle, submitted=time.time(),
                             finished=None, error="", cluster_run=0)
        if run.stop_reason is not None:
            self.request_stop(run)

    async def attach(self, run: RunningJob) -> bool:
        run.handle = run.job.cluster_job_id
        return await self.status(run) is not None

    async def wait(self, run: RunningJob) -> Ended:
        follower = EventFollower(self.store, run.job.job_id, run.files.events)
        while True:
            status = await self.status(run)
            # a run the trainer has not seen start: the events before it first, then its state change, then its own
            follower.poll(until=self._unnoted_run_start(run, status))
            if status is None:
                return Ended(1, f"{self.cluster} no longer knows job {run.handle}")
            if status.phase == "ended":
                follower.poll()  # whatever the workers wrote last
                detail = f"{self.cluster} job {run.handle} ended {status.describe()}"
                return Ended(status.code, detail, cancelled_outside=status.cancelled, requeue=status.requeue)
            await self._note_phase(run, status)
            follower.poll()
            await self.hub.poll_once()
            await asyncio.sleep(self.settings.cluster_poll_seconds)

    def _unnoted_run_start(self, run: RunningJob, status: ClusterStatus | None) -> int | None:
        """Where the events of a run the trainer has not yet noted as running begin (None: no such run)."""
        job = self.store.get_job(run.job.job_id)
        if status is None or status.phase != "running" or (job.state == RUNNING and status.run <= job.cluster_run):
            return None
        return run_start(run.job_dir, status.run)

    async def _note_phase(self, run: RunningJob, status: ClusterStatus) -> None:
        """QUEUED while the cluster queues it (again, after a preemption or requeue), RUNNING while it runs.

        A requeue is noticed by the pending state or, when the job was queued again for less than a poll
        interval, by the cluster's restart count (once the previous run has ended). A requeued run starts from
        the latest checkpoint; steps trained after it (when the workers were killed before they could checkpoint)
        are trained again, so their events appear again after the RUNNING "resuming from step N" state change.
        """
        job = self.store.get_job(run.job.job_id)
        new_run = status.run > job.cluster_run
        if job.state == RUNNING and (status.phase == "pending" or (new_run and status.settled)):
            cause = await self.requeue_cause(run) or "requeued"
            now = f", now {status.describe()}" if status.phase == "pending" else ""
            self.store.set_state(job.job_id, QUEUED, f"{self.cluster} {cause} it{now}; will resume from the latest "
                                 "checkpoint", submitted=time.time())
            job = self.store.get_job(job.job_id)
        if status.phase == "running" and job.state != RUNNING and (status.settled or not new_run):
            step = run.files.latest_step()
            note = f"running on {status.where or self.cluster}" + (f", resuming from step {step}" if step else "")
            self.store.set_state(job.job_id, RUNNING, note, step=step, started=job.started or time.time(),
                                 cluster_run=status.run)
            if job.submitted is not None:
                self.hub.metrics.observe_queue_wait(self.name, time.time() - job.submitted)

    def request_stop(self, run: RunningJob) -> None:
        if run.handle is None:
            return
        task = asyncio.create_task(self._stop(run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop(self, run: RunningJob) -> None:
        """Graceful first (the workers checkpoint), then forced after the stop timeout."""
        try:
            await self.cancel(run, force=False)
            try:
                await asyncio.wait_for(run.done.wait(), self.settings.worker_stop_timeout_seconds)
                return
            except TimeoutError:
                log.warning("job %s: still running %.0fs after the stop request; cancelling it hard",
                            run.job.job_id, self.settings.worker_stop_timeout_seconds)
            await self.cancel(run, force=True)
        except (OSError, RuntimeError):
            log.exception("job %s: could not stop %s job %s", run.job.job_id, self.cluster, run.handle)
