"""Batches concurrent Score requests for one model: whatever waits while a pass runs is scored together next."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, field

from chargpt.core.checkpoint import Checkpoint
from inference_service.scoring import ScoreJob, ScoreResult, score_many


@dataclass
class _Waiting:
    text: str
    stride: int
    want_logprobs: bool
    future: asyncio.Future[ScoreResult] = field(repr=False)


class ScoreBatcher:
    """Runs Score requests on the model's worker; the requests that pile up meanwhile share the next passes.

    Everything here but `_score_batch` runs on the event loop, so the waiting list needs no lock. One text with
    characters outside the vocabulary fails alone; a request whose client went away is skipped.
    """

    def __init__(self, checkpoint: Checkpoint, executor: Executor, tokens_per_pass: int) -> None:
        self.checkpoint, self.executor, self.tokens_per_pass = checkpoint, executor, tokens_per_pass
        self._waiting: list[_Waiting] = []
        self._drainer: asyncio.Task[None] | None = None

    async def score(self, text: str, stride: int, want_logprobs: bool) -> ScoreResult:
        future: asyncio.Future[ScoreResult] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(text, stride, want_logprobs, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch = [w for w in self._waiting if not w.future.done()]
                self._waiting = []
                try:
                    outcomes = await loop.run_in_executor(self.executor, self._score_batch, batch)
                except Exception as exc:  # the pass itself failed (out of memory, say): every request sees why
                    outcomes = [exc] * len(batch)
                for waiting, outcome in zip(batch, outcomes, strict=True):
                    if waiting.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        waiting.future.set_exception(outcome)
                    else:
                        waiting.future.set_result(outcome)
        finally:
            self._drainer = None

    def _score_batch(self, batch: list[_Waiting]) -> list[ScoreResult | Exception]:
        """Encode each text (a bad one fails alone), then score the rest together. Runs on the worker."""
        encoded: list[list[int] | Exception] = []
        for waiting in batch:
            try:
                encoded.append(self.checkpoint.tokenizer.encode(waiting.text, field="text"))
            except Exception as exc:
                encoded.append(exc)
        jobs = [ScoreJob(ids, waiting.stride, waiting.want_logprobs)
                for ids, waiting in zip(encoded, batch, strict=True) if not isinstance(ids, Exception)]
        results = iter(score_many(self.checkpoint.model, jobs, self.tokens_per_pass) if jobs else [])
        return [ids if isinstance(ids, Exception) else next(results) for ids in encoded]
