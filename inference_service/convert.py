"""Request validation and proto conversion: GenerateRequest -> GenRequest, engine results -> messages."""

from __future__ import annotations

import asyncio
import math
import random
import time

from chargpt.core.sampling import SamplingPreset, resolve_sampling
from chargpt.core.tokenizer import CharTokenizer
from chargpt.errors import InvalidArgumentError
from chargpt.v1 import common_pb2, inference_pb2
from chargpt.wire.lineage import lineage_proto
from chargpt.wire.model_config import model_config_proto
from inference_service.logits_processors import LogitsControls
from inference_service.logprobs import MAX_LOGPROBS, TokenLogprob
from inference_service.registry import ModelEntry, State
from inference_service.requests import Finish, GenRequest, Outbox, Summary

DEFAULT_MAX_NEW_TOKENS = 256
MAX_STOPS, MAX_STOP_CHARS = 16, 64
MAX_SAMPLES, MAX_LOGIT_BIAS = 16, 256
SAMPLING_PRESETS = {inference_pb2.SAMPLING_PRESET_FOCUSED: SamplingPreset.FOCUSED,
                    inference_pb2.SAMPLING_PRESET_BALANCED: SamplingPreset.BALANCED,
                    inference_pb2.SAMPLING_PRESET_CREATIVE: SamplingPreset.CREATIVE}
FINISH = {Finish.LENGTH: inference_pb2.FINISH_REASON_LENGTH, Finish.STOP: inference_pb2.FINISH_REASON_STOP,
          Finish.CANCELLED: inference_pb2.FINISH_REASON_CANCELLED,
          Finish.DEADLINE: inference_pb2.FINISH_REASON_CANCELLED}
STATES = {State.LOADING: inference_pb2.MODEL_STATE_LOADING, State.READY: inference_pb2.MODEL_STATE_READY,
          State.FAILED: inference_pb2.MODEL_STATE_FAILED, State.UNLOADING: inference_pb2.MODEL_STATE_UNLOADING}


def start_character(tokenizer: CharTokenizer) -> str:
    """What an empty prompt starts from: a newline if the model knows it (text usually starts after one),
    else the first character of its vocabulary."""
    return "\n" if "\n" in tokenizer.vocabulary else tokenizer.vocabulary[0]


def build_requests(request: inference_pb2.GenerateRequest, tokenizer: CharTokenizer, block_size: int,
                   limit: int, time_remaining: float | None) -> list[GenRequest]:
    """Validate a GenerateRequest against the model and the service's limits; one GenRequest per sample."""
    max_new = request.max_new_tokens if request.HasField("max_new_tokens") else DEFAULT_MAX_NEW_TOKENS
    if not 1 <= max_new <= limit:
        raise InvalidArgumentError("max_new_tokens", f"must be 1..{limit}, got {max_new}")
    if request.preset and request.preset not in SAMPLING_PRESETS:
        raise InvalidArgumentError("preset", f"unknown preset {request.preset}")
    params = resolve_sampling(SAMPLING_PRESETS.get(request.preset),
                              request.temperature if request.HasField("temperature") else None,
                              request.top_k if request.HasField("top_k") else None,
                              request.top_p if request.HasField("top_p") else None)
    stops = list(request.stop)
    if len(stops) > MAX_STOPS:
        raise InvalidArgumentError("stop", f"at most {MAX_STOPS} stop sequences, got {len(stops)}")
    for stop in stops:
        if not 1 <= len(stop) <= MAX_STOP_CHARS:
            raise InvalidArgumentError("stop", f"each stop sequence must be 1-{MAX_STOP_CHARS} characters")
    prompt = request.prompt or start_character(tokenizer)
    dropped = max(0, len(prompt) - block_size)
    if dropped and not set(prompt[:dropped]) <= set(tokenizer.vocabulary):  # cheap check of the cropped part
        tokenizer.encode(prompt, field="prompt")  # raises, naming the unknown characters
    ids = tokenizer.encode(prompt[dropped:], field="prompt")
    seed = request.seed if request.HasField("seed") else random.getrandbits(63)
    deadline = time.monotonic() + time_remaining if time_remaining is not None else None
    n = request.n if request.HasField("n") else 1
    if not 1 <= n <= MAX_SAMPLES:
        raise InvalidArgumentError("n", f"must be 1..{MAX_SAMPLES}, got {request.n}")
    if not 0 <= request.logprobs <= MAX_LOGPROBS:
        raise InvalidArgumentError("logprobs", f"must be 0..{MAX_LOGPROBS}, got {request.logprobs}")
    controls = build_controls(request, tokenizer)
    outbox = Outbox()
    return [GenRequest(prompt_ids=ids, prompt_chars_dropped=dropped, max_new_tokens=max_new, params=params,
                       seed=sample_seed(seed, i), stops=stops, deadline=deadline, loop=asyncio.get_running_loop(),
                       outbox=outbox, index=i, logprobs=request.logprobs, controls=controls)
            for i in range(n)]


def sample_seed(seed: int, index: int) -> int:
    """Sample 0 uses the request's seed; sample i > 0 a 63-bit seed derived from (seed, i) (stable across runs:
    random.Random hashes a str seed with SHA-512)."""
    return seed if index == 0 else random.Random(f"chargpt-sample:{seed}:{index}").getrandbits(63)


def _bounded(request: inference_pb2.GenerateRequest, field: str, default: float, low: float, high: float,
             low_open: bool = False) -> float:
    if not request.HasField(field):
        return default
    value: float = getattr(request, field)
    if not math.isfinite(value) or not (low < value if low_open else low <= value) or value > high:
        interval = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise InvalidArgumentError(field, f"must be in {interval}, got {value}")
    return value


def build_controls(request: inference_pb2.GenerateRequest, tokenizer: CharTokenizer) -> LogitsControls:
    """The logits processors' settings, each bounds-checked and named in errors."""
    if len(request.logit_bias) > MAX_LOGIT_BIAS:
        raise InvalidArgumentError("logit_bias", f"at most {MAX_LOGIT_BIAS} entries, got {len(request.logit_bias)}")
    bias = []
    for char, value in sorted(request.logit_bias.items()):
        if len(char) != 1 or char not in tokenizer.vocabulary:
            raise InvalidArgumentError("logit_bias", f"keys must be single characters of the model's vocabulary, "
                                       f"got {char[:20]!r}")
        if not (math.isfinite(value) and -100.0 <= value <= 100.0):
            raise InvalidArgumentError("logit_bias", f"values must be in [-100, 100], got {value} for {char!r}")
        bias.append((tokenizer.encode(char, field="logit_bias")[0], value))
    return LogitsControls(
        repetition_penalty=_bounded(request, "repetition_penalty", 1.0, 0.0, 100.0, low_open=True),
        frequency_penalty=_bounded(request, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=_bounded(request, "presence_penalty", 0.0, -2.0, 2.0),
        min_p=_bounded(request, "min_p", 0.0, 0.0, 1.0), logit_bias=tuple(bias))


def logprobs_to_proto(entries: list[TokenLogprob]) -> list[inference_pb2.TokenLogprob]:
    return [inference_pb2.TokenLogprob(token=e.token, logprob=e.logprob,
                                       top_logprobs=[inference_pb2.TopLogprob(token=t, logprob=v) for t, v in e.top])
            for e in entries]


def summary_to_proto(summary: Summary) -> inference_pb2.GenerationSummary:
    p = summary.params
    return inference_pb2.GenerationSummary(
        finish_reason=FINISH.get(summary.finish, inference_pb2.FINISH_REASON_UNSPECIFIED),
        prompt_tokens=summary.prompt_tokens, generated_tokens=summary.generated_tokens, seed=summary.seed,
        prompt_truncated=summary.prompt_chars_dropped > 0, prompt_chars_dropped=summary.prompt_chars_dropped,
        queue_seconds=summary.queue_seconds, time_to_first_token_seconds=summary.ttft_seconds,
        total_seconds=summary.total_seconds, stop_sequence=summary.stop_sequence,
        temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, index=summary.index)


def model_to_proto(entry: ModelEntry) -> inference_pb2.Model:
    out = inference_pb2.Model(name=entry.name, state=STATES[entry.state], source=entry.source,
                              device=entry.device, dtype=entry.dtype, error=entry.error)
    if entry.engine is not None:  # how it is served (calibration.py's plan, or the settings that override it)
        out.kv_cache_dtype = str(entry.engine.cache.k.dtype).split(".")[-1]
        out.parallel_decode_from = entry.engine.policy.reported_parallel_from
        out.narrow_decode_from = entry.engine.policy.narrow_from
        out.split_decode_from = entry.engine.policy.reported_split_from
    if entry.loaded_time is not None:
        out.loaded_time.FromDatetime(entry.loaded_time)
    if entry.checkpoint is None:
        return out
    manifest, config = entry.checkpoint.manifest, entry.checkpoint.manifest.model
    out.config.CopyFrom(model_config_proto(config))
    out.vocabulary = manifest.vocabulary
    out.parameter_count = entry.checkpoint.model.num_parameters()
    out.weights_sha256 = manifest.weights.sha256
    t = manifest.training
    out.training.CopyFrom(common_pb2.TrainingMetadata(
        job_id=t.job_id, corpus_id=t.corpus_id, corpus_name=t.corpus_name, corpus_sha256=t.corpus_sha256,
        step=t.step, train_loss=t.train_loss if t.train_loss is not None else math.nan,
        val_loss=t.val_loss if t.val_loss is not None else math.nan, library_versions=t.library_versions))
    out.training.created_time.FromDatetime(t.created_time)
    if t.parent is not None:
        out.parent.CopyFrom(lineage_proto(t.parent))
    return out
