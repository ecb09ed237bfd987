"""A tenant's trainer quotas (TenantPolicy): queued jobs, training seconds per day and stored corpus bytes, checked
before anything is created. running_jobs is not refused here: the scheduler keeps such jobs queued."""

from __future__ import annotations

import time
from collections.abc import Callable

from chargpt.server.tenancy.policy import TenantPolicy
from trainer_service.store import Store
from trainer_service.store_records import QUEUED, JobRecord
from trainer_service.training.api import TrainingPlan

DAY_SECONDS = 24 * 3600.0
UNBUDGETED_JOB_SECONDS = 1.0  # what a job without max_seconds needs at least: refused once the budget is spent


def job_seconds(job: JobRecord, max_seconds: float | None, now: float) -> float:
    """What a job counts against its tenant's daily budget: its measured time once finished; while queued or
    running, its max_seconds (what it may still use) or the time measured so far, whichever is more."""
    measured = 0.0 if job.started is None else (job.finished or now) - job.started
    return measured if job.finished is not None else max(measured, max_seconds or 0.0)


class TrainerQuotas:
    """Checks one tenant's quotas against what the store holds (QuotaExceededError naming the quota)."""

    def __init__(self, store: Store, policy: TenantPolicy, plan: Callable[[str], TrainingPlan]) -> None:
        self.store, self.policy, self.plan = store, policy, plan

    def training_seconds_used(self, tenant: str, now: float | None = None) -> float:
        now = time.time() if now is None else now
        jobs = self.store.owner_jobs_since(tenant, now - DAY_SECONDS)
        return sum(job_seconds(j, self.plan(j.job_id).max_seconds, now) for j in jobs)

    def check_job(self, tenant: str, plan: TrainingPlan) -> None:
        """A job about to be queued (created or resumed): one more queued job, and its training time."""
        limits = self.policy.limits(tenant)
        if limits.queued_jobs is not None:
            queued = sum(1 for j in self.store.jobs_in_state(QUEUED) if j.owner == tenant)
            limits.check(tenant, "queued_jobs", queued)
        if limits.training_seconds_per_day is not None:
            limits.check(tenant, "training_seconds_per_day", self.training_seconds_used(tenant),
                         adding=plan.max_seconds or UNBUDGETED_JOB_SECONDS)

    def corpus_bytes_check(self, tenant: str) -> Callable[[int], None] | None:
        """The upload's check of `size` bytes more against the tenant's stored corpus bytes (None: unlimited)."""
        limits = self.policy.limits(tenant)
        if limits.corpus_bytes is None:
            return None
        stored = self.store.corpus_bytes(tenant)
        return lambda size: limits.check(tenant, "corpus_bytes", stored, adding=size)
