"""Which requests run in a step, and in which KV-cache rows: the waiting queue, admission, and the running batch.

Running sequences always occupy cache rows 0..B-1 so that a decode step reads slices of the cache, not
gathered copies: newcomers are prefilled into the rows after the last running one, and a finished sequence's
row is refilled by moving the last running row into it (swap-remove).
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Protocol

from chargpt.errors import ResourceExhaustedError
from inference_service.engine.model_metrics import ModelMetrics
from inference_service.engine.outputs import FinishedRows, SchedulerOutput
from inference_service.engine.request import Finish, GenRequest


class RowStore(Protocol):
    """Where a runner keeps the running sequences' keys and values, row by row (model_runner.py, ggml_runner.py)."""

    def remove_row(self, index: int, last: int, length: int) -> None: ...

    def clear_row(self, index: int) -> None: ...

    def clear(self) -> None: ...


class Scheduler:
    """The waiting queue and the running batch of one model. `add` and `take_waiting` run under the engine's lock
    (the event loop adds); everything else on the engine thread."""

    def __init__(self, rows: RowStore, block_size: int, max_batch: int, max_queue: int,
                 metrics: ModelMetrics) -> None:
        self.rows, self.block_size = rows, block_size
        self.max_batch, self.max_queue = max_batch, max_queue
        self.running: list[GenRequest] = []  # request i holds cache row i
        self.waiting: deque[GenRequest] = deque()
        self._rows_changed = True
        self._m = metrics

    def add(self, requests: tuple[GenRequest, ...]) -> None:
        """Queue a request's samples, all or none, behind every waiting request of the same or a lower priority
        value (vLLM's order: lower first, then arrival)."""
        if len(self.waiting) + len(requests) > self.max_queue:
            raise ResourceExhaustedError(f"the model's queue is full ({self.max_queue} requests waiting)")
        priority = requests[0].priority if requests else 0
        if not self.waiting or self.waiting[-1].priority <= priority:  # the usual case: all at the default
            self.waiting.extend(requests)
        else:
            at = bisect.bisect_right(self.waiting, priority, key=lambda r: r.priority)
            for offset, request in enumerate(requests):
                self.waiting.insert(at + offset, request)
        self._m.waiting.set(len(self.waiting))

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def take_waiting(self) -> list[GenRequest]:
        """The waiting requests that fit in the batch now, in admission order (priority, then arrival)."""
        free = self.max_batch - len(self.running)
        newcomers = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        self._m.waiting.set(len(self.waiting))
        return newcomers

    def schedule(self, newcomers: list[GenRequest], now: float) -> SchedulerOutput:
        """Drop the cancelled and expired, decode everyone else one character, and prefill the newcomers."""
        aborted = self._drop_abandoned(now)
        newcomers = [r for r in newcomers if not _abandoned(r, now, aborted)]
        decode = self.running
        slides = [index for index, request in enumerate(decode) if request.cache_len >= self.block_size]
        if decode:
            self._m.batch_size.observe(len(decode))
        if newcomers:
            self._admit(newcomers, now)
            self.running = [*decode, *newcomers]  # a new list: `decode` stays this step's decode rows
        rows_changed, self._rows_changed = self._rows_changed, False
        return SchedulerOutput(self.running, decode, newcomers, slides, aborted, rows_changed)

    def _admit(self, newcomers: list[GenRequest], now: float) -> None:
        for request in newcomers:
            request.history = list(request.prompt_ids)
            request.cache_len = len(request.prompt_ids)
            request.joined = now
            self._m.queue_time.observe(now - request.arrival)
            self._m.prompt_tokens.inc(request.cache_len)
        self._rows_changed = True

    def _drop_abandoned(self, now: float) -> list[tuple[GenRequest, Finish]]:
        aborted: list[tuple[GenRequest, Finish]] = []
        for index in range(len(self.running) - 1, -1, -1):
            if _abandoned(self.running[index], now, aborted):
                self._remove(index)
        return aborted

    def free(self, finished: FinishedRows) -> None:
        """Give the finished requests' rows back, keeping the running rows contiguous."""
        for index in finished.non_finite:
            self.rows.clear_row(index)
        for index in reversed(finished.rows):
            self._remove(index)

    def _remove(self, index: int) -> None:
        """Swap-remove: the last running row moves into the freed one."""
        last = len(self.running) - 1
        self.rows.remove_row(index, last, self.running[last].cache_len)
        self.running[index] = self.running[last]
        self.running.pop()
        self._rows_changed = True

    def clear(self, newcomers: list[GenRequest]) -> list[GenRequest]:
        """Empty the batch after a failed step; the requests that were running or joining."""
        requests = list({id(r): r for r in [*self.running, *newcomers]}.values())
        self.running = []
        self.rows.clear()
        self._rows_changed = True
        return requests

    def record_running(self) -> None:
        """Publish the batch size after a step (once per step, not per change)."""
        self._m.running.set(len(self.running))


def _abandoned(request: GenRequest, now: float, aborted: list[tuple[GenRequest, Finish]]) -> bool:
    """Whether a request was cancelled or expired (then it is added to `aborted`, with why)."""
    if request.deadline is not None and now > request.deadline:  # first: gRPC also cancels it then
        aborted.append((request, Finish.DEADLINE))
    elif request.cancelled:
        aborted.append((request, Finish.CANCELLED))
    else:
        return False
    return True
