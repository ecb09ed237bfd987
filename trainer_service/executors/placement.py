"""A job's place in the queues (its tenant and priority) as the cluster schedulers take it: Slurm's nice and QOS,
Kubernetes' priority class and Kueue queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from chargpt.server.tenancy.principal import DEFAULT_TENANT
from trainer_service.store_records import JobRecord

Band = Literal["high", "normal", "low"]
TENANT_LABEL = "chargpt.io/tenant"
SLURM_MAX_NICE = 2147483645  # sbatch refuses a larger --nice


@dataclass(frozen=True)
class Placement:
    """Who a job runs for and its priority within that tenant (lower first, vLLM's convention)."""

    tenant: str = DEFAULT_TENANT
    priority: int = 0

    @classmethod
    def of(cls, job: JobRecord) -> Placement:
        return cls(tenant=job.owner, priority=job.priority)

    @property
    def band(self) -> Band:
        """The coarse class cluster settings map to QOS/priority classes: below 0 high, 0 normal, above 0 low."""
        return "high" if self.priority < 0 else "normal" if self.priority == 0 else "low"

    def slurm_nice(self, step: int) -> int:
        """sbatch --nice: `step` per priority point above 0; unprivileged users may not go below 0 (a high
        priority takes the QOS configured for it instead)."""
        return min(max(0, self.priority) * step, SLURM_MAX_NICE)


DEFAULT_PLACEMENT = Placement()
