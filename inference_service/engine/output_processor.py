"""Turns a step's logits into characters: sampling, stop sequences, finishing, metrics, and the hand-off to the loop.

Output reaches the event loop once per step, or at most once per `stream_interval` seconds when that is set
(vLLM's stream interval, in time): a request's first character and its end are always sent at once, and the
characters between ride together. Every message the loop sends takes CPU from the decode threads (with two
cores, any of it slows both torch threads), so fewer, fuller messages buy throughput at large batches.
"""

from __future__ import annotations

import contextlib
import time

import torch

from chargpt.errors import NonFiniteLogitsError
from inference_service.constraints import BatchConstraints
from inference_service.engine.model_metrics import ModelMetrics
from inference_service.engine.outputs import FinishedRows, ModelRunnerOutput, SchedulerOutput
from inference_service.engine.request import Delta, Event, Finish, GenRequest
from inference_service.logits_processors import PenaltyState, apply_controls, tracks_history
from inference_service.logprobs import TokenLogprob, batch_logprobs
from inference_service.sampler import BatchSampler


class OutputProcessor:
    """Samples each row's next character and files what it releases; `flush` hands the step's events over."""

    def __init__(self, vocabulary: str, metrics: ModelMetrics, stream_interval: float = 0.0) -> None:
        self.vocabulary = vocabulary
        self.sampler = BatchSampler()
        self._constraints: BatchConstraints | None = None  # the batch's constrained rows (None: no row has one)
        self._m = metrics
        self._outbox: list[tuple[GenRequest, Event]] = []
        self._stream_interval, self._next_flush, self._flush_now = stream_interval, 0.0, False
        self._gaps: list[float] = []  # this step's inter-token gaps and TTFTs, observed on the event loop
        self._ttfts: list[float] = []

    def process(self, scheduled: SchedulerOutput, output: ModelRunnerOutput) -> FinishedRows:
        """Record one new character for every scheduled row; the rows whose requests finished."""
        for request in scheduled.prefill:  # penalties count the prompt's characters as seen
            if tracks_history(request.params):
                request.penalties = PenaltyState(request.prompt_ids, len(self.vocabulary))
        picks = self._sample(output.logits, scheduled.rows, scheduled.rows_changed)
        now = time.monotonic()
        finished = FinishedRows([], [])
        for index, (request, (token, logprob)) in enumerate(zip(scheduled.rows, picks, strict=True)):
            if token is None:
                finished.non_finite.append(index)
            if self._accept(request, token, logprob, now):
                finished.rows.append(index)
        return finished

    def _sample(self, logits: torch.Tensor, rows: list[GenRequest],
                rows_changed: bool) -> list[tuple[int | None, TokenLogprob | None]]:
        """Mask each constrained row to what its constraint allows, apply each row's logits processors, sample, and
        take log-probabilities from the raw (constrained) logits. A row whose logits were not finite gets (None,
        None); a constrained row that chose to end gets the id len(vocabulary)."""
        if rows_changed:
            self.sampler.set_rows([r.sampling for r in rows])
            self._constraints = _batch_constraints(rows)
        end = None
        if self._constraints is not None:  # most batches: none, and no per-row work or extra column
            logits, end = self._constraints.apply(logits)
        controlled = any(r.has_controls for r in rows)  # most steps: none, and no per-row objects to build
        scores = apply_controls(logits, [r.row_controls() for r in rows]) if controlled else logits
        tokens = self.sampler.sample(scores if end is None else torch.cat([scores, end], dim=1))
        if end is not None:  # the end option is a choice, not a character: it has no log-probability entry
            logits = torch.cat([logits, end], dim=1)
            tokens_logged = [None if t == len(self.vocabulary) else t for t in tokens]
        else:
            tokens_logged = tokens
        wanted = [r.logprobs if token is not None else 0 for r, token in zip(rows, tokens_logged, strict=True)]
        logprobs = (batch_logprobs(logits, tokens_logged, wanted, self.vocabulary) if any(wanted)
                    else [None] * len(rows))
        return list(zip(tokens, logprobs, strict=True))

    def _accept(self, request: GenRequest, token: int | None, logprob: TokenLogprob | None, now: float) -> bool:
        """File one character (or a failure) for a request; True if it finished."""
        if token is None:  # this row's logits were NaN or inf: fail the request, the rest of the batch goes on
            self._finish(request, Finish.ERROR, error=NonFiniteLogitsError(
                f"the model produced non-finite logits (NaN or inf) for character {request.generated + 1} of "
                "this request, so no character can be sampled; its weights or dtype are numerically broken "
                "(a float16 model can overflow: reload it as float32 or bfloat16)"))
            return True
        if token == len(self.vocabulary):  # its constraint was complete, and ending was sampled over going on
            self._release(request, request.matcher.flush(), None)
            self._finish(request, Finish.STOP)
            return True
        self._observe(request, token, now)
        complete = request.constraint is not None and request.constraint.advance(token)
        text, stop = request.matcher.feed(self.vocabulary[token])
        if stop is None and (complete or request.generated >= request.max_new_tokens):
            text += request.matcher.flush()
        self._release(request, text, logprob)
        if stop is not None or complete:  # a stop sequence, or a constraint that cannot continue
            self._finish(request, Finish.STOP, stop or "")
        elif request.generated >= request.max_new_tokens:
            self._finish(request, Finish.LENGTH)
        else:
            return False
        return True

    def _observe(self, request: GenRequest, token: int, now: float) -> None:
        """Count a generated character: history, penalties, and its latency."""
        request.history.append(token)
        if request.penalties is not None:
            request.penalties.observe(token)
        request.generated += 1
        if request.first_token:
            self._gaps.append(now - request.last_token)
        else:
            request.first_token = now
            self._ttfts.append(now - request.arrival)
            self._flush_now = True
        request.last_token = now

    def _release(self, request: GenRequest, text: str, logprob: TokenLogprob | None) -> None:
        if text or logprob is not None:
            self._outbox.append((request, Delta(request.index, text, [logprob] if logprob is not None else [])))

    def abort(self, aborted: list[tuple[GenRequest, Finish]]) -> None:
        """Finish the requests the scheduler dropped (cancelled or expired)."""
        for request, finish in aborted:
            self._finish(request, finish)

    def fail(self, requests: list[GenRequest], exc: Exception) -> None:
        """Finish every request of a step that raised."""
        for request in requests:
            self._finish(request, Finish.ERROR, error=exc)

    def _finish(self, request: GenRequest, finish: Finish, stop: str = "",
                error: BaseException | None = None) -> None:
        summary = request.summary(finish, stop, error)
        self._m.generation_tokens.inc(request.generated)
        if finish in (Finish.LENGTH, Finish.STOP):
            self._m.success(finish.value).inc()
            self._m.e2e.observe(summary.total_seconds)
        else:
            self._m.failure(finish.value).inc()
        self._outbox.append((request, summary))
        self._flush_now = True

    def flush(self) -> None:
        """Hand this step's text, summaries and latencies to the event loop in one callback: the loop files
        them while the next step's matmuls run (they release the GIL), not between steps."""
        if not self._outbox:
            return  # latencies wait for the next delivery (held-back text produces no event)
        now = time.monotonic()
        if not self._flush_now and now < self._next_flush:
            return  # within the stream interval: this step's text rides with a later step's
        self._flush_now, self._next_flush = False, now + self._stream_interval
        items, self._outbox = self._outbox, []
        gaps, ttfts, self._gaps, self._ttfts = self._gaps, self._ttfts, [], []
        with contextlib.suppress(RuntimeError):  # the event loop is gone (server stopped): nobody listens
            items[0][0].loop.call_soon_threadsafe(_deliver, items, gaps, ttfts, self._m)


def _batch_constraints(rows: list[GenRequest]) -> BatchConstraints | None:
    constrained = [(i, r.constraint) for i, r in enumerate(rows) if r.constraint is not None]
    return (BatchConstraints([c for _, c in constrained], [i for i, _ in constrained], len(rows)) if constrained
            else None)


def _deliver(items: list[tuple[GenRequest, Event]], gaps: list[float], ttfts: list[float],
             metrics: ModelMetrics) -> None:
    for request, item in items:
        request.outbox.add(item)
    for gap in gaps:
        metrics.inter_token.observe(gap)
    for ttft in ttfts:
        metrics.ttft.observe(ttft)
