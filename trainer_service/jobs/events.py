"""The watch hub: tails the event log workers append to, feeds metrics, and wakes watchers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from trainer_service.metrics import TrainerMetrics
from trainer_service.store import Store
from trainer_service.store_records import TERMINAL, EventRecord

log = logging.getLogger(__name__)
PAGE = 500


class EventHub:
    """One poller for every job; watchers read the log from the database at their own pace.

    Workers write events straight into SQLite, so nothing is lost if the server dies, and a slow watcher
    only delays itself: it never holds a queue the training side has to fill.
    """

    def __init__(self, store: Store, metrics: TrainerMetrics, poll_seconds: float) -> None:
        self.store, self.metrics, self.poll_seconds = store, metrics, poll_seconds
        self._last_id = store.last_event_id()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._poll_lock = asyncio.Lock()  # each event is accounted exactly once
        self.listeners: list[Callable[[EventRecord], None]] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.poll_once()
        async with self._changed:
            self._changed.notify_all()

    async def poll_once(self) -> None:
        """Account every event appended since the last poll, then wake the watchers."""
        seen = False
        async with self._poll_lock:
            while events := self.store.events_since_id(self._last_id):
                for event in events:
                    self._account(event)
                self._last_id = events[-1].id
                seen = True
        if seen:
            async with self._changed:
                self._changed.notify_all()

    def _account(self, event: EventRecord) -> None:
        try:
            self.metrics.observe_event(event)
            for listener in self.listeners:
                listener(event)
        except Exception:  # metrics must never break the event pipeline
            log.exception("could not account event %s of job %s", event.seq, event.job_id)

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # e.g. a locked database: try again next tick
                log.exception("event poll failed")
            await asyncio.sleep(self.poll_seconds)

    async def watch(self, job_id: str, after_sequence: int) -> AsyncIterator[EventRecord]:
        """The job's events after `after_sequence`, then live ones; ends once the job is finished."""
        last = after_sequence
        while True:
            events = self.store.events_after(job_id, last, PAGE)
            for event in events:
                yield event
                last = event.seq
            if len(events) == PAGE:
                continue
            if self.store.get_job(job_id).state in TERMINAL and not self.store.events_after(job_id, last, 1):
                return
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=max(1.0, self.poll_seconds * 4))
