"""Per-tenant Prometheus labels with bounded cardinality: the first tenants seen keep their name, later ones
share "other", so a deployment with thousands of tenants cannot blow up the metrics store."""

from __future__ import annotations

import threading

MAX_TENANT_LABELS = 50
OVERFLOW_LABEL = "other"


class TenantLabels:
    """Maps tenant names to label values, at most `limit` distinct ones plus "other"."""

    def __init__(self, limit: int = MAX_TENANT_LABELS) -> None:
        self.limit = limit
        self._named: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str) -> str:
        if tenant in self._named:
            return tenant
        with self._lock:
            if len(self._named) < self.limit:
                self._named.add(tenant)
                return tenant
        return OVERFLOW_LABEL
