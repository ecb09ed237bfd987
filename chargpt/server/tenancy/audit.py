"""The audit trail: who created, deleted, downloaded, exported or loaded what, and when, as JSON lines."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from chargpt.server.tenancy.principal import Principal, current_principal

log = logging.getLogger(__name__)


class AuditLog:
    """Appends one JSON object per action to a file (None: keeps nothing); a write failure is logged, never
    fails the request."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, action: str, resource: str, resource_id: str, outcome: str = "ok",
               principal: Principal | None = None, **extra: object) -> None:
        """E.g. record("delete", "corpus", "shakespeare") as the current caller."""
        if self.path is None:
            return
        caller = principal or current_principal()
        entry = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "tenant": caller.tenant,
                 "key_id": caller.key_id, "role": str(caller.role), "action": action, "resource": resource,
                 "id": resource_id, "outcome": outcome, **extra}
        line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as out:
                out.write(line)
        except OSError as exc:
            log.error("audit log %s: %s (entry: %s)", self.path, exc, line.strip())
