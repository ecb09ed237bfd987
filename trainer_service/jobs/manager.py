"""The job manager: queues jobs, hands each to the executor (this node, Slurm or Kubernetes), records how it ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from chargpt.errors import FailedPreconditionError
from chargpt.server.tenancy.policy import TenantPolicy
from chargpt.server.tenancy.principal import DEFAULT_TENANT
from trainer_service.executors import make_executor
from trainer_service.executors.base import Ended, LaunchError, RunningJob
from trainer_service.jobs.events import EventHub
from trainer_service.jobs.failure import job_error
from trainer_service.jobs.fair_queue import fair_order, over_running_limit
from trainer_service.jobs.layout import CORPUS_COPY, LOG_FILE, JobDir
from trainer_service.jobs.parent import Parent
from trainer_service.settings import TrainerSettings
from trainer_service.store import Store
from trainer_service.store_records import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    CorpusRecord,
    JobRecord,
)
from trainer_service.training.api import CorpusRef, TrainingPlan

log = logging.getLogger(__name__)
CANCEL_WAIT_SECONDS = 20.0  # CancelTrainingJob waits this long for the worker's final checkpoint


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class JobManager:
    """Owns the queue and the executor's runs; every state change goes through the store (and so the event log)."""

    def __init__(self, settings: TrainerSettings, store: Store, hub: EventHub) -> None:
        self.settings, self.store, self.hub = settings, store, hub
        self.jobs_dir = settings.jobs_dir or settings.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.executor = make_executor(settings, store, hub)
        self.policy = TenantPolicy(settings.tenants_file)
        self._last_served: dict[str, float] = {}  # tenant -> when the scheduler last started one of its jobs
        self._running: dict[str, RunningJob] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._plans: dict[str, TrainingPlan] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong references to fire-and-forget tasks

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def plan(self, job_id: str) -> TrainingPlan:
        if job_id not in self._plans:
            self._plans[job_id] = TrainingPlan.model_validate_json(self.store.get_job(job_id).plan)
        return self._plans[job_id]

    # ---- life cycle

    async def start(self) -> None:
        await self._recover()
        self._task = asyncio.create_task(self._schedule_forever())
        self._wake.set()

    async def _recover(self) -> None:
        """Jobs a cluster still holds are re-attached; jobs a previous server ran here resume from a checkpoint."""
        for state in (RUNNING, QUEUED):
            for job in self.store.jobs_in_state(state):
                if job.cluster_job_id and job.executor == self.executor.name:
                    await self._reattach(job)
                elif state == RUNNING and job.cancel_requested:
                    self.store.set_state(job.job_id, CANCELLED, "cancelled (server went down while the job was "
                                         "stopping)", finished=time.time())
                elif state == RUNNING or job.cluster_job_id:
                    self.store.set_state(job.job_id, QUEUED, "server restarted; will resume from the latest "
                                         "checkpoint", cluster_job_id="")

    async def _reattach(self, job: JobRecord) -> None:
        run = RunningJob(job, self.plan(job.job_id), [], self.job_dir(job.job_id))
        self._running[job.job_id] = run
        if not await self.executor.attach(run):
            self._running.pop(job.job_id)
            self.store.set_state(job.job_id, QUEUED, f"{self.executor.name} no longer holds it; will resume from "
                                 "the latest checkpoint", cluster_job_id="")
            return
        log.info("job %s: re-attached to %s job %s", job.job_id, self.executor.name, job.cluster_job_id)
        if job.cancel_requested:
            self._request_stop(run, "cancel")
        self._spawn(self._supervise(run))

    async def stop(self) -> None:
        """Stop scheduling; local workers checkpoint (jobs back to QUEUED), cluster jobs run on unsupervised."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:  # let a launch in progress finish, so its worker is supervised too
            await self._task
        if self.executor.detach_on_shutdown:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._running.clear()
        running = list(self._running.values())
        for run in running:
            self._request_stop(run, "shutdown")
        if running:
            await asyncio.wait([asyncio.create_task(r.done.wait()) for r in running],
                               timeout=self.settings.worker_stop_timeout_seconds + 10)
        await self.hub.poll_once()

    # ---- requests

    async def create(self, job_id: str, display_name: str, plan: TrainingPlan, corpus: CorpusRecord,
                     parent: Parent | None = None, owner: str = DEFAULT_TENANT, priority: int = 0) -> JobRecord:
        job_dir = JobDir(self.job_dir(job_id))
        job_dir.path.mkdir(parents=True)
        if parent is not None:
            await asyncio.to_thread(self._pin, parent, job_dir)
        path = Path(corpus.path)
        if not self.executor.reads_trainer_corpora:
            shutil.copyfile(path, job_dir.path / CORPUS_COPY)
            path = job_dir.path / CORPUS_COPY
        ref = CorpusRef(corpus_id=corpus.corpus_id, name=corpus.name, sha256=corpus.sha256 or corpus.corpus_id,
                        path=path)
        write_atomic(job_dir.plan, plan.model_dump_json(indent=2))
        write_atomic(job_dir.corpus, ref.model_dump_json(indent=2))
        self._plans[job_id] = plan
        self.store.insert_job(job_id, display_name, corpus.corpus_id, plan.model_dump_json(),
                              plan.model.parameter_count(), owner, priority)
        await self.hub.poll_once()
        self._wake.set()
        return self.store.get_job(job_id)

    @staticmethod
    def _pin(parent: Parent, job_dir: JobDir) -> None:
        """The fine-tune's own copy of its parent checkpoint, or no job at all."""
        try:
            parent.pin()
        except OSError as exc:
            shutil.rmtree(job_dir.path, ignore_errors=True)
            raise FailedPreconditionError(f"init_from: could not copy the checkpoint into the job's directory "
                                          f"({exc})") from exc

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
        step = JobDir(self.job_dir(job_id)).latest_step()
        note = f"resumed from step {step}" if step else "restarted from step 0"
        self.store.set_state(job_id, QUEUED, note, cancel_requested=False, error="", finished=None,
                             cluster_job_id="")
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
        """Start queued jobs in fair order (fair_queue) on devices with a free slot; a waiting job reserves its
        devices. A tenant at its running_jobs quota waits without reserving any.

        Cluster executors occupy no slots here: every queued job is submitted and the cluster queues it.
        """
        busy: dict[str, int] = {}
        for run in self._running.values():
            for slot in run.slots:
                busy[slot] = busy.get(slot, 0) + 1
        running = Counter(run.job.owner for run in self._running.values())
        reserved: set[str] = set()
        for job in fair_order(self.store.jobs_in_state(QUEUED), self._last_served):
            if self._stopping:
                return
            if job.job_id in self._running:  # submitted, waiting in the cluster's queue
                continue
            if over_running_limit(job, running, self.policy.limits(job.owner).running_jobs):
                continue
            plan = self.plan(job.job_id)
            slots = self.executor.slots(plan)
            if any(s in reserved or busy.get(s, 0) >= self.settings.max_jobs_per_device for s in slots):
                reserved.update(slots)
                continue
            for slot in slots:
                busy[slot] = busy.get(slot, 0) + 1
            running[job.owner] += 1
            self._last_served[job.owner] = time.monotonic()
            await self._launch(job, plan, slots)

    async def _launch(self, job: JobRecord, plan: TrainingPlan, slots: list[str]) -> None:
        run = RunningJob(job, plan, slots, self.job_dir(job.job_id))
        run.files.clear_outcome()
        self._running[job.job_id] = run
        try:
            await self.executor.launch(run)
        except LaunchError as exc:
            self._running.pop(job.job_id, None)
            error = job_error(str(exc))
            self.store.set_state(job.job_id, FAILED, error, error=error, finished=time.time())
            run.done.set()
            return
        finally:
            await self.hub.poll_once()
        self._spawn(self._supervise(run))

    async def _supervise(self, run: RunningJob) -> None:
        try:
            ended = await self.executor.wait(run)
        finally:
            self._running.pop(run.job.job_id, None)
        try:
            state, message = self._final_state(run, ended)
            self.store.set_state(run.job.job_id, state, message, error=message if state == FAILED else "",
                                 tokens_per_second=0.0, cluster_job_id="",
                                 finished=time.time() if state in TERMINAL else None)
            log.info("job %s: %s (%s)", run.job.job_id, state, message)
            await self.hub.poll_once()
        finally:
            run.done.set()
            self._wake.set()

    def _final_state(self, run: RunningJob, ended: Ended) -> tuple[str, str]:
        outcome = run.files.read_outcome()
        step = outcome.final_step if outcome else self.store.get_job(run.job.job_id).step
        if ended.code == 0 and outcome is not None and not outcome.stopped_early \
                and (outcome.schedule_complete or outcome.final_step >= (run.plan.max_steps or math.inf)):
            return SUCCEEDED, f"finished {outcome.final_step} steps"  # even if a stop request came too late
        if run.stop_reason == "cancel":
            return CANCELLED, f"cancelled at step {step}"
        if run.stop_reason == "shutdown":
            return QUEUED, f"server shutting down at step {step}; will resume from the latest checkpoint"
        if ended.requeue:
            return QUEUED, f"{ended.detail}; will resume from the latest checkpoint"
        if ended.cancelled_outside:
            return CANCELLED, f"{ended.detail} at step {step}"
        if ended.code == 0 and outcome is not None:
            return FAILED, f"worker stopped at step {outcome.final_step} without being asked to (outside signal?)"
        reason = run.files.failure_reason(run.log_offset)
        return FAILED, job_error(reason, f"{ended.detail}; traceback in {LOG_FILE}" if reason else ended.detail)

    def _request_stop(self, run: RunningJob, reason: str) -> None:
        if run.stop_reason != "cancel":
            run.stop_reason = "cancel" if reason == "cancel" else "shutdown"
        self.executor.request_stop(run)

