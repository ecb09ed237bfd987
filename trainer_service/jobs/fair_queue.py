"""The order queued jobs start in: tenants take turns (the one served longest ago first), and within a tenant
lower `priority` first (vLLM's convention), then the oldest."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import zip_longest

from trainer_service.store_records import JobRecord


def fair_order(queued: Sequence[JobRecord], last_served: Mapping[str, float]) -> list[JobRecord]:
    """Round-robin over tenants: each one's best job, then each one's second, ...; a tenant never served goes
    first, then the one served longest ago (ties: the tenant whose best job is oldest)."""
    by_tenant: dict[str, list[JobRecord]] = {}
    for job in queued:
        by_tenant.setdefault(job.owner, []).append(job)
    for jobs in by_tenant.values():
        jobs.sort(key=lambda j: (j.priority, j.seq))
    turns = sorted(by_tenant, key=lambda t: (last_served.get(t, -math.inf), by_tenant[t][0].seq))
    rounds = zip_longest(*(by_tenant[t] for t in turns))
    return [job for round_ in rounds for job in round_ if job is not None]


def over_running_limit(job: JobRecord, running: Mapping[str, int], limit: int | None) -> bool:
    """True when the job's tenant already runs `limit` jobs: it waits, queued (it is not refused)."""
    return limit is not None and running.get(job.owner, 0) >= limit
