"""The audit trail: who created, deleted, downloaded, exported or loaded what, and when, as JSON lines."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from chargpt.server.errors import status_for
from chargpt.server.tenancy.principal import Principal, current_principal

log = logging.getLogger(__name__)
Handler = TypeVar("Handler", bound=Callable[..., Any])


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


def outcome_of(exc: BaseException) -> str:
    """A refused action's outcome: the gRPC status name its caller got, e.g. "PERMISSION_DENIED"."""
    return str(status_for(exc).name)


class Audited(Protocol):
    """A servicer that keeps an audit trail."""

    audit: AuditLog


def audits_refusals(action: str, resource: str,
                    resource_id: Callable[[Any], str] | None = None) -> Callable[[Handler], Handler]:
    """Decorates an RPC handler of an `Audited` servicer: a refused call (an error before its first response
    message) is recorded with its status name as the outcome, then raised on; the handler records its successes
    itself, with what only it knows (ids, sizes). `resource_id` reads the id from the request (none for a
    request stream, which is not read twice)."""
    def decorate(handler: Handler) -> Handler:
        def refused(servicer: Audited, request: Any, exc: Exception) -> None:
            servicer.audit.record(action, resource, resource_id(request) if resource_id else "",
                                  outcome=outcome_of(exc))

        if inspect.isasyncgenfunction(handler):
            @functools.wraps(handler)
            async def stream(servicer: Audited, request: Any, context: Any) -> AsyncIterator[Any]:
                answered = False
                try:
                    async with contextlib.aclosing(handler(servicer, request, context)) as messages:
                        async for message in messages:
                            answered = True
                            yield message
                except Exception as exc:
                    if not answered:  # a failure mid-stream is not a refusal: the action was recorded
                        refused(servicer, request, exc)
                    raise
            return cast(Handler, stream)

        @functools.wraps(handler)
        async def unary(servicer: Audited, request: Any, context: Any) -> Any:
            try:
                return await handler(servicer, request, context)
            except Exception as exc:
                refused(servicer, request, exc)
                raise
        return cast(Handler, unary)
    return decorate
