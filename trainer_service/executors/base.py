"""What the job manager asks of an executor: launch a job's workers, wait for them, stop them, find them again."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainer_service.executors.placement import Placement
from trainer_service.jobs.layout import JobDir
from trainer_service.store_records import JobRecord
from trainer_service.training.api import TrainingPlan

StopReason = Literal["cancel", "shutdown"]


@dataclass
class RunningJob:
    """A job the manager has handed to its executor, from launch until the workers are gone."""

    job: JobRecord
    plan: TrainingPlan
    slots: list[str]
    job_dir: Path
    log_offset: int = 0  # where this run's output starts in worker.log
    handle: Any = None  # the executor's: a process (local), a Slurm job id or Kubernetes Job name (clusters)
    stop_reason: StopReason | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def files(self) -> JobDir:
        return JobDir(self.job_dir)

    @property
    def placement(self) -> Placement:
        return Placement.of(self.job)


@dataclass(frozen=True)
class Ended:
    """How the workers ended, as the executor saw it; the manager decides the job's state from it."""

    code: int  # 0: the workers exited cleanly; anything else: they did not
    detail: str  # what happened, in the executor's terms ("worker exited with code 1", "Slurm job 7: TIMEOUT")
    cancelled_outside: bool = False  # the cluster cancelled it (scancel, Job deleted), not the trainer
    requeue: bool = False  # preempted for good: submit it again, it resumes from the latest checkpoint


class LaunchError(Exception):
    """The executor could not start the job (sbatch refused it, the worker binary is missing, ...)."""


class Executor(ABC):
    """Runs jobs' worker processes somewhere; every job state change stays with the manager and the store."""

    name: str = ""
    max_nodes: int = 1  # largest resources.num_nodes it runs
    detach_on_shutdown = False  # clusters keep running jobs while the trainer is down; it re-attaches later
    # Workers on the trainer's node read its corpora in place; cluster nodes see only the job directory (on
    # storage they share with the trainer), so the manager copies the corpus text into it.
    reads_trainer_corpora = False

    def slots(self, plan: TrainingPlan) -> list[str]:
        """The trainer-node devices a job occupies while it runs (none when a cluster schedules it)."""
        return []

    @abstractmethod
    async def launch(self, run: RunningJob) -> None:
        """Start the job (set run.handle) and record where it runs; raise LaunchError if it cannot start."""

    async def attach(self, run: RunningJob) -> bool:
        """After a trainer restart: take up a job the cluster still holds (run.job.cluster_job_id)."""
        return False

    @abstractmethod
    async def wait(self, run: RunningJob) -> Ended:
        """Until the workers are gone (progress events flow into the store meanwhile)."""

    @abstractmethod
    def request_stop(self, run: RunningJob) -> None:
        """Ask the workers to checkpoint and exit; force them after the stop timeout."""
