"""Continuous batching for one model: a KV cache, a decode loop on its own thread, requests joining and leaving.

Active sequences always occupy cache rows 0..B-1 so that a decode step reads slices of the cache, not
gathered copies: newcomers are prefilled into the rows after the last active one, and a finished sequence's
row is refilled by moving the last active row into it (swap-remove).

When a sequence fills the context window (block_size positions), its cache row is rebuilt from its last
`keep = block_size - slide` characters (positions 0..keep-1; slide defaults to block_size // 4) and decoding
goes on from there, so every character is predicted from between keep+1 and block_size characters of context.
The notebook crops to the last block_size characters at every step, which needs a full forward pass per
character; the sliding re-prefill costs one prefill per `slide` characters instead, and matches the notebook
exactly until the window first fills. slide = 1 reproduces the notebook exactly, at the notebook's cost.

Output reaches the event loop once per step, or at most once per `stream_interval` seconds when that is set
(vLLM's stream interval, in time): a request's first character and its end are always sent at once, and the
characters between ride together. Every message the loop sends takes CPU from the decode threads (with two
cores, any of it slows both torch threads), so fewer, fuller messages buy throughput at large batches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque

import torch
from prometheus_client import Counter

from chargpt.core.model import GPT, KVCache
from chargpt.errors import NonFiniteLogitsError, ResourceExhaustedError, UnavailableError
from inference_service.decode_policy import DecodePolicy
from inference_service.fast_decode import DEFAULT_ATTENTION, Attention, FastDecoder, RowGroups
from inference_service.logits_processors import PenaltyState, apply_controls, tracks_history
from inference_service.logprobs import TokenLogprob, batch_logprobs
from inference_service.metrics import InferenceMetrics
from inference_service.requests import Delta, Event, Finish, GenRequest
from inference_service.sampler import BatchSampler

log = logging.getLogger(__name__)


class Engine:
    """Owns one model's cache and decode thread; `submit` is called from the event loop."""

    def __init__(self, name: str, model: GPT, vocabulary: str, max_batch: int, max_queue: int,
                 metrics: InferenceMetrics, cache_dtype: torch.dtype | None = None, window_slide: int = 0,
                 policy: DecodePolicy | None = None, attention: Attention = DEFAULT_ATTENTION,
                 stream_interval: float = 0.0, float32_model: GPT | None = None) -> None:
        """`float32_model`: a float32 copy of a narrower `model`, for batches below policy.narrow_from."""
        self.policy = policy or DecodePolicy(max_threads=torch.get_num_threads())
        self.model, self.vocabulary = model, vocabulary
        self.block_size = model.config.block_size
        slide = window_slide or max(1, self.block_size // 4)
        self.keep = self.block_size - min(slide, self.block_size)
        weight = next(model.parameters())
        self.device = weight.device
        self.cache = KVCache(model.config, max_batch, device=self.device, dtype=cache_dtype or weight.dtype)
        self.decoder = FastDecoder(model, self.cache, attention)
        self.float32_decoder = (FastDecoder(float32_model, self.cache, attention) if float32_model is not None
                                else self.decoder)
        self.max_batch, self.max_queue = max_batch, max_queue
        groups = self.policy.groups_for(max_batch)
        self.row_groups = RowGroups(groups) if groups > 1 and self.device.type == "cpu" else None
        self.active: list[GenRequest] = []
        self.waiting: deque[GenRequest] = deque()
        self.sampler = BatchSampler()
        self._outbox: list[tuple[GenRequest, Event]] = []
        self._stream_interval, self._next_flush, self._flush_now = stream_interval, 0.0, False
        self._gaps: list[float] = []  # this step's inter-token gaps and TTFTs, observed on the event loop
        self._ttfts: list[float] = []
        self._cond = threading.Condition()
        self._closing = False
        self._m = _ModelMetrics(metrics, name)
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # ---- called from the event loop ----

    def submit(self, *requests: GenRequest) -> None:
        """Queue a request's samples, all or none."""
        with self._cond:
            if self._closing:
                raise UnavailableError("the model is being unloaded")
            if len(self.waiting) + len(requests) > self.max_queue:
                raise ResourceExhaustedError(f"the model's queue is full ({self.max_queue} requests waiting)")
            self.waiting.extend(requests)
            self._m.waiting.set(len(self.waiting))
            self._cond.notify()

    def cancel_all(self) -> None:
        """Mark every queued and running request cancelled (shutdown after the grace period)."""
        with self._cond:
            for request in [*self.active, *self.waiting]:
                request.cancel()
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread once current work is done (blocks: call it from a worker thread)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # ---- the engine thread ----

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while (admitted := self._next_admitted()) is not None:
                    self._run_step(admitted)
        finally:
            if self.row_groups is not None:
                self.row_groups.close()

    def _next_admitted(self) -> list[GenRequest] | None:
        """Wait for work; the waiting requests that fit in the batch now (None: closed and nothing left)."""
        with self._cond:
            while not self.active and not self.waiting and not self._closing:
                self._cond.wait()
            if self._closing and not self.active and not self.waiting:
                return None
            free = self.max_batch - len(self.active)
            admitted = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
            self._m.waiting.set(len(self.waiting))
            return admitted

    def _run_step(self, admitted: list[GenRequest]) -> None:
        try:
            self._step(admitted)
        except Exception as exc:  # a bug or a device error: fail this batch, keep serving
            log.exception("engine step failed")
            self._fail_all(list({id(r): r for r in [*self.active, *admitted]}.values()), exc)
        self._m.running.set(len(self.active))
        if not self.active:
            self.policy.apply(self.policy.max_threads)
        self._flush()

    def _step(self, admitted: list[GenRequest]) -> None:
        now = time.monotonic()
        self._drop_abandoned(now)
        admitted = [r for r in admitted if not self._abandoned(r, now)]
        if admitted:
            self._admit(admitted)
        if self.active:
            self._decode()

    def _abandoned(self, request: GenRequest, now: float) -> bool:
        """Finish a cancelled or expired request; True if it was."""
        if request.deadline is not None and now > request.deadline:  # first: gRPC also cancels it then
            self._finish(request, Finish.DEADLINE)
        elif request.cancelled:
            self._finish(request, Finish.CANCELLED)
        else:
            return False
        return True

    def _drop_abandoned(self, now: float) -> None:
        for index in range(len(self.active) - 1, -1, -1):
            if self._abandoned(self.active[index], now):
                self._remove(index)

    def _admit(self, admitted: list[GenRequest]) -> None:
        """Prefill newcomers into the rows after the active ones (on every thread: the decode policy's count is for
        one-token steps) and sample their first characters."""
        self.policy.apply(self.policy.max_threads)
        start, n = len(self.active), len(admitted)
        lengths = [len(r.prompt_ids) for r in admitted]
        padded = torch.zeros(n, max(lengths), dtype=torch.long)
        for i, r in enumerate(admitted):
            padded[i, : lengths[i]] = torch.tensor(r.prompt_ids)
            r.history = list(r.prompt_ids)
            r.cache_len = lengths[i]
            r.joined = time.monotonic()
            if tracks_history(r.params):
                r.penalties = PenaltyState(r.prompt_ids, len(self.vocabulary))
            self._m.queue_time.observe(r.joined - r.arrival)
            self._m.prompt_tokens.inc(lengths[i])
        length_t = torch.tensor(lengths)
        rows = torch.arange(start, start + n)
        logits = self._prefill(padded.to(self.device), length_t.to(self.device), rows.to(self.device))
        last = logits[torch.arange(n, device=self.device), (length_t - 1).to(self.device)]
        first = BatchSampler()
        first.set_rows([r.sampling for r in admitted])
        self.active.extend(admitted)
        self.sampler.set_rows([r.sampling for r in self.active])
        self._accept_all(self._pick(last, admitted, first), offset=start)

    def _decode(self) -> None:
        for index, request in enumerate(self.active):
            if request.cache_len >= self.block_size:
                self._slide(index, request)
        batch = len(self.active)
        self._m.batch_size.observe(batch)
        self.policy.apply(self.policy.threads_for(batch))
        tokens = torch.tensor([r.history[-1] for r in self.active], device=self.device)
        lengths = [r.cache_len for r in self.active]
        decoder = self.decoder if self.policy.narrow_for(batch) else self.float32_decoder
        if self.row_groups is not None and self.policy.groups_for(batch) > 1:
            logits = self.row_groups.step(decoder, tokens, lengths)
        else:
            logits = decoder.step(tokens, torch.tensor(lengths, device=self.device), max(lengths) + 1)
        for request in self.active:
            request.cache_len += 1
        self._accept_all(self._pick(logits, self.active, self.sampler), offset=0)

    def _pick(self, logits: torch.Tensor, rows: list[GenRequest],
              sampler: BatchSampler) -> list[tuple[int | None, TokenLogprob | None]]:
        """Apply each row's logits processors, sample, and take log-probabilities from the raw logits.
        A row whose logits were not finite gets (None, None)."""
        controlled = any(r.has_controls for r in rows)  # most steps: none, and no per-row objects to build
        tokens = sampler.sample(apply_controls(logits, [r.row_controls() for r in rows]) if controlled else logits)
        wanted = [r.logprobs if token is not None else 0 for r, token in zip(rows, tokens, strict=True)]
        logprobs = batch_logprobs(logits, tokens, wanted, self.vocabulary) if any(wanted) else [None] * len(rows)
        return list(zip(tokens, logprobs, strict=True))

    def _slide(self, index: int, request: GenRequest) -> None:
        """Rebuild a full row from the last `keep` characters before the pending one (see module doc)."""
        if self.keep:
            context = torch.tensor([request.history[-(self.keep + 1):-1]], device=self.device)
            self._prefill(context, torch.tensor([self.keep], device=self.device),
                          torch.tensor([index], device=self.device))
        else:
            self.cache.lengths[index] = 0
        request.cache_len = self.keep

    def _prefill(self, idx: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """GPT.prefill into cache rows; through a scratch cache in the model's dtype if the cache's differs."""
        if self.cache.k.dtype == self.model.wte.weight.dtype:
            return self.model.prefill(idx, lengths, self.cache, rows)
        n, T = idx.shape
        scratch = KVCache(self.model.config, n, device=self.device, dtype=self.model.wte.weight.dtype, max_len=T)
        logits = self.model.prefill(idx, lengths, scratch)
        self.cache.k[:, rows, :, :T] = scratch.k.to(self.cache.k.dtype)
        self.cache.v[:, rows, :, :T] = scratch.v.to(self.cache.v.dtype)
        self.cache.lengths[rows] = lengths
        return logits

    def _accept_all(self, picks: list[tuple[int | None, TokenLogprob | None]], offset: int) -> None:
        """Record one new character for rows offset.., then remove the sequences that finished."""
        now = time.monotonic()
        for index in [offset + i for i, (token, _) in enumerate(picks) if token is None]:
            # The failed row's keys and values may be NaN; the next sequence in this row would read them past its
            # own length (masked, but 0 * NaN is NaN in attention), so they are cleared.
            self.cache.k[:, index].zero_()
            self.cache.v[:, index].zero_()
        done = [offset + i for i, (token, logprob) in enumerate(picks)
                if self._accept(self.active[offset + i], token, logprob, now)]
        for index in reversed(done):
            self._remove(index)

    def _accept(self, request: GenRequest, token: int | None, logprob: TokenLogprob | None, now: float) -> bool:
        if token is None:  # this row's logits were NaN or inf: fail the request, the rest of the batch goes on
            self._finish(request, Finish.ERROR, error=NonFiniteLogitsError(
                f"the model produced non-finite logits (NaN or inf) for character {request.generated + 1} of "
                "this request, so no character can be sampled; its weights or dtype are numerically broken "
                "(a float16 model can overflow: reload it as float32 or bfloat16)"))
            return True
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
        text, stop = request.matcher.feed(self.vocabulary[token])
        if stop is None and request.generated >= request.max_new_tokens:
            text += request.matcher.flush()
        if text or logprob is not None:
            self._outbox.append((request, Delta(request.index, text, [logprob] if logprob is not None else [])))
        if stop is not None:
            self._finish(request, Finish.STOP, stop)
        elif request.generated >= request.max_new_tokens:
            self._finish(request, Finish.LENGTH)
        else:
            return False
        return True

    def _remove(self, index: int) -> None:
        """Swap-remove: the last active row moves into the freed one, keeping rows 0..B-1 contiguous."""
        last = len(self.active) - 1
        if index != last:
            moved = self.active[last]
            n = moved.cache_len
            self.cache.k[:, index, :, :n] = self.cache.k[:, last, :, :n]
            self.cache.v[:, index, :, :n] = self.cache.v[:, last, :, :n]
            self.cache.lengths[index] = n
            self.active[index] = moved
        self.active.pop()
        self.sampler.set_rows([r.sampling for r in self.active])

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

    def _fail_all(self, requests: list[GenRequest], exc: Exception) -> None:
        for request in requests:
            self._finish(request, Finish.ERROR, error=exc)
        self.active.clear()
        self.cache.lengths.zero_()
        self.sampler.set_rows([])

    def _flush(self) -> None:
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


def _deliver(items: list[tuple[GenRequest, Event]], gaps: list[float], ttfts: list[float],
             metrics: _ModelMetrics) -> None:
    for request, item in items:
        request.outbox.add(item)
    for gap in gaps:
        metrics.inter_token.observe(gap)
    for ttft in ttfts:
        metrics.ttft.observe(ttft)


class _ModelMetrics:
    """The metric children of one model, bound once (labels() per token would be slow)."""

    def __init__(self, metrics: InferenceMetrics, name: str) -> None:
        self.ttft = metrics.ttft.labels(model=name)
        self.inter_token = metrics.inter_token.labels(model=name)
        self.queue_time = metrics.queue_time.labels(model=name)
        self.e2e = metrics.e2e.labels(model=name)
        self.batch_size = metrics.batch_size.labels(model=name)
        self.prompt_tokens = metrics.prompt_tokens.labels(model=name)
        self.generation_tokens = metrics.generation_tokens.labels(model=name)
        self.running = metrics.running.labels(model=name)
        self.waiting = metrics.waiting.labels(model=name)
        self._success, self._failure, self._name = metrics.success, metrics.failure, name

    def success(self, reason: str) -> Counter:
        return self._success.labels(model=self._name, finish_reason=reason)

    def failure(self, reason: str) -> Counter:
        return self._failure.labels(model=self._name, reason=reason)
