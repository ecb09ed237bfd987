"""The inference domain service: generation and scoring on loaded models; gRPC and HTTP are adapters over it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any

from chargpt import errors
from chargpt.core.tokenizer import CharTokenizer
from chargpt.sampling_params import SamplingParams
from chargpt.server.tenancy.policy import TenantPolicy
from chargpt.server.tenancy.principal import current_principal
from inference_service.constraints import ConstraintState, compile_constraint
from inference_service.engine.request import Chunk, Finish, GenRequest, Outbox, Summary
from inference_service.metrics import InferenceMetrics
from inference_service.rate_limits import KeyLimiter, Lease
from inference_service.registry import ModelEntry, ModelRegistry
from inference_service.scoring import ScoreResult
from inference_service.settings import InferenceSettings


@dataclass
class TenantUsage:
    """One admitted generation as its tenant's limits and metrics see it: characters as they are generated, and
    how it ended."""

    lease: Lease
    metrics: InferenceMetrics
    tenant: str  # the tenant's metric label value
    chars_counter: Any = None  # the tenant's child of tenant_generated_chars, looked up once (it is per message)

    def generated(self, chars: int) -> None:
        if chars:
            self.lease.add_chars(chars)
            if self.chars_counter is None:
                self.chars_counter = self.metrics.tenant_generated_chars.labels(tenant=self.tenant)
            self.chars_counter.inc(chars)

    def end(self, outcome: str) -> None:
        if not self.lease.released:
            self.lease.release()
            self.metrics.tenant_requests.labels(tenant=self.tenant, outcome=outcome).inc()


@dataclass
class Generation:
    """A request's samples, queued on one model: read `chunks()` once, or `abandon()` it unread."""

    registry: ModelRegistry
    entry: ModelEntry
    jobs: list[GenRequest]
    usage: TenantUsage
    started: bool = False

    @property
    def prompt_tokens(self) -> int:
        return len(self.jobs[0].prompt_ids)

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        """Chunks until every sample has finished (each carries everything its sample produced since the previous
        one, see Outbox); closing it early cancels the samples (the engine drops them at its next step) and
        releases the model."""
        self.started = True
        outcome = "cancelled"  # unless it ends below: the reader stopped early
        try:
            remaining = len(self.jobs)
            while remaining:
                for chunk in await self.jobs[0].outbox.take():
                    self.usage.generated(len(chunk.text))
                    if chunk.summary is not None:
                        _check(chunk.summary)
                        remaining -= 1
                    yield chunk
            outcome = "finished"
        except Exception:
            outcome = "failed"
            raise
        finally:
            for job in self.jobs:
                job.cancel()  # a no-op when finished
            self.usage.end(outcome)
            self.registry.release(self.entry)

    def abandon(self) -> None:
        """Cancel the samples and release the model if `chunks()` never ran (its cleanup would have)."""
        if not self.started:
            self.started = True
            for job in self.jobs:
                job.cancel()
            self.usage.end("cancelled")
            self.registry.release(self.entry)


class InferenceService:
    """Generation and scoring on the registry's models, in domain terms (no transport's messages)."""

    def __init__(self, settings: InferenceSettings, registry: ModelRegistry, metrics: InferenceMetrics) -> None:
        self.settings, self.registry, self.metrics = settings, registry, metrics
        self.policy = TenantPolicy(settings.tenants_file)
        self.limiter = KeyLimiter()

    def generate(self, model: str, prompt: str, params: SamplingParams, time_remaining: float | None,
                 priority: int = 0) -> Generation:
        """Check `params` against the model, the service's limits and the caller's per-key limits, and queue the
        request's n samples (admitted by `priority`, lower first, then arrival)."""
        entry = self.registry.acquire(model)
        usage: TenantUsage | None = None
        try:
            assert entry.checkpoint is not None and entry.engine is not None
            usage = self._admit(params.n * params.max_new_tokens)
            with self.rejections(model):
                jobs = _samples(prompt, params, entry.checkpoint.tokenizer,
                                entry.checkpoint.model.config.block_size, self.settings.max_new_tokens_limit,
                                time_remaining, priority)
                entry.engine.submit(*jobs)
        except BaseException:
            if usage is not None:
                usage.end("rejected")
            self.registry.release(entry)
            raise
        return Generation(self.registry, entry, jobs, usage)

    def _admit(self, most_chars: int) -> TenantUsage:
        """The caller's lease on one more generation of at most `most_chars` characters; RateLimitedError
        (counted per tenant) past its limits."""
        caller = current_principal()
        tenant = self.metrics.tenant_label(caller.tenant)
        try:
            lease = self.limiter.admit(caller, self.policy.limits(caller.tenant), most_chars)
        except (errors.RateLimitedError, errors.QuotaExceededError) as exc:  # the latter: a limit of 0
            limit = exc.limit if isinstance(exc, errors.RateLimitedError) else exc.quota
            self.metrics.tenant_rate_limited.labels(tenant=tenant, limit=limit).inc()
            self.metrics.tenant_requests.labels(tenant=tenant, outcome="rate_limited").inc()
            raise
        return TenantUsage(lease, self.metrics, tenant)

    @contextlib.contextmanager
    def rejections(self, model: str) -> Iterator[None]:
        """Count a generation refused before it ran (a bad field, a full queue) as a failure of `model` (a loaded
        one the caller may use, by its registry key: request names never become metric labels); the adapters wrap
        their conversion to SamplingParams in it."""
        try:
            yield
        except errors.ChargptError as exc:
            with contextlib.suppress(errors.NotFoundError):
                label = self.registry.get(model).name
                reason = "queue_full" if isinstance(exc, errors.ResourceExhaustedError) else "rejected"
                self.metrics.failure.labels(model=label, reason=reason).inc()
            raise

    async def score(self, model: str, text: str, stride: int | None, include_token_logprobs: bool) -> ScoreResult:
        """Perplexity of `text`, in back-to-back windows unless a smaller `stride` is given (None: block_size)."""
        entry = self.registry.acquire(model)
        try:
            assert entry.checkpoint is not None and entry.scorer is not None
            block = entry.checkpoint.model.config.block_size
            if len(text) > self.settings.max_score_chars:
                raise errors.ResourceExhaustedError(f"text has {len(text)} characters; the limit is "
                                                    f"{self.settings.max_score_chars}")
            if len(text) < 2:
                raise errors.InvalidArgumentError("text", "needs at least 2 characters")
            stride = block if stride is None else stride
            if not 1 <= stride <= block:
                raise errors.InvalidArgumentError("stride", f"must be 1..{block} (block_size), got {stride}")
            # Encoding and scoring run on the model's worker, batched with other waiting Score requests.
            result = await entry.scorer.score(text, stride, include_token_logprobs)
            if not math.isfinite(result.mean_nll):  # finite logits always give a finite log-softmax
                raise errors.NonFiniteLogitsError(
                    "the model produced non-finite logits (NaN or inf) for this text, so it cannot be scored; its "
                    "weights or dtype are numerically broken (a float16 model can overflow: reload it as float32 "
                    "or bfloat16)")
            self.metrics.score_requests.labels(model=entry.name).inc()
            return result
        finally:
            self.registry.release(entry)


def start_character(tokenizer: CharTokenizer) -> str:
    """What an empty prompt starts from: a newline if the model knows it (text usually starts after one),
    else the first character of its vocabulary."""
    return "\n" if "\n" in tokenizer.vocabulary else tokenizer.vocabulary[0]


def _samples(prompt: str, params: SamplingParams, tokenizer: CharTokenizer, block_size: int, limit: int,
             time_remaining: float | None, priority: int = 0) -> list[GenRequest]:
    """The limits that depend on the model and the service (SamplingParams holds the rest); one GenRequest per
    sample."""
    if params.max_new_tokens > limit:
        raise errors.InvalidArgumentError("max_new_tokens", f"must be 1..{limit}, got {params.max_new_tokens}")
    bias = tuple((tokenizer.encode(char, field="logit_bias")[0], value)
                 for char, value in sorted(params.logit_bias.items()))  # names an unknown character
    automaton = compile_constraint(params, "".join(tokenizer.vocabulary))  # before any generation
    prompt = prompt or start_character(tokenizer)
    dropped = max(0, len(prompt) - block_size)
    if dropped and not set(prompt[:dropped]) <= set(tokenizer.vocabulary):  # cheap check of the cropped part
        tokenizer.encode(prompt, field="prompt")  # raises, naming the unknown characters
    ids = tokenizer.encode(prompt[dropped:], field="prompt")
    seed = params.seed if params.seed is not None else random.getrandbits(63)
    deadline = time.monotonic() + time_remaining if time_remaining is not None else None
    outbox, loop = Outbox(), asyncio.get_running_loop()
    return [GenRequest(prompt_ids=ids, prompt_chars_dropped=dropped, params=params, seed=sample_seed(seed, i),
                       deadline=deadline, loop=loop, outbox=outbox, index=i, logit_bias=bias, priority=priority,
                       constraint=ConstraintState(automaton) if automaton is not None else None)
            for i in range(params.n)]


def sample_seed(seed: int, index: int) -> int:
    """Sample 0 uses the request's seed; sample i > 0 a 63-bit seed derived from (seed, i) (stable across runs:
    random.Random hashes a str seed with SHA-512)."""
    return seed if index == 0 else random.Random(f"chargpt-sample:{seed}:{index}").getrandbits(63)


def _check(summary: Summary) -> None:
    """Raise the error that ended a generation (deadline, engine failure)."""
    if summary.finish is Finish.DEADLINE:
        raise TimeoutError("the request's deadline passed")
    if summary.finish is Finish.ERROR:
        if isinstance(summary.error, errors.NonFiniteLogitsError):
            raise summary.error  # FAILED_PRECONDITION: the model, not the request or the server, is at fault
        raise errors.ChargptError(f"generation failed: {summary.error}")
