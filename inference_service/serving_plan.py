"""How a loaded model is served: its decode choice (measured, cached or the defaults) turned into a running Engine.

A model whose shapes this host has not measured yet is served at once with DEFAULT_CHOICE while its decode step
is timed in the background (registry.py); the measured plan then starts a second engine that takes the new
requests, and the first finishes its own and stops (issue 23: the first LoadModel had waited for the timing,
past the client's 30 s deadline).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass

import torch

from chargpt.core.calibration import Calibrator
from chargpt.core.checkpoint import Checkpoint
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT
from chargpt.wire.calibration_state import CalibrationState
from inference_service.decode_policy import DEFAULT_PARALLEL_FROM, DecodePolicy
from inference_service.engine import Engine
from inference_service.engine.ggml_runner import LLAMA_MAX_SEQ, ggml_available
from inference_service.kv_cache_sizing import available_memory, size_cache
from inference_service.metrics import InferenceMetrics
from inference_service.serving_choices import DTYPES, DecodeChoice, cached_decode, calibrated_decode
from inference_service.settings import InferenceSettings

log = logging.getLogger(__name__)
# Off CPU, and on CPU until measured: the model's own weights and KV cache, every thread from a batch of 24.
DEFAULT_CHOICE = DecodeChoice(weight_dtype="float32", cache_dtype="", parallel_from=DEFAULT_PARALLEL_FROM)


@dataclass(frozen=True)
class Serving:
    """A started engine and the weights it serves (the checkpoint's model from then on)."""

    engine: Engine
    model: GPT
    float32_model: GPT | None  # the float32 weights small decode batches use, when `model` is narrower


class ServingPlanner:
    """Decode choices for loaded models and the engines that serve them."""

    def __init__(self, settings: InferenceSettings, metrics: InferenceMetrics) -> None:
        self.settings, self.metrics = settings, metrics

    def big_batch(self) -> int:
        return min(self.settings.max_batch_size or 64, 64)

    def initial_choice(self, model: GPT, measure_dtype: bool, threads: int) -> tuple[DecodeChoice, CalibrationState]:
        """The cached measured choice on CPU, else the defaults: PENDING when a measurement should follow."""
        if model.lm_head.weight.device.type != "cpu":
            return DEFAULT_CHOICE, CalibrationState.NOT_MEASURED
        calibrator = Calibrator(self.settings.resolved_calibration_dir())
        found = cached_decode(calibrator, model, self.big_batch(), threads, self._race(measure_dtype))
        if found is None:
            return DEFAULT_CHOICE, CalibrationState.PENDING
        return restrict(found, measure_dtype), CalibrationState.MEASURED

    def measure(self, model: GPT, measure_dtype: bool, threads: int) -> DecodeChoice:
        """Time this model's decode step on this host (seconds; run on a background thread) and cache it."""
        calibrator = Calibrator(self.settings.resolved_calibration_dir())
        choice = calibrated_decode(calibrator, model, self.big_batch(), threads, self._race(measure_dtype))
        return restrict(choice, measure_dtype)

    def _race(self, measure_dtype: bool) -> bool:
        """Whether the calibration races ggml: only where the runner is the measured choice (restrict())."""
        return measure_dtype and self.settings.decode_runner == "auto"

    async def start(self, name: str, checkpoint: Checkpoint, choice: DecodeChoice, threads: int,
                    rows: int | None = None) -> Serving:
        """An engine serving `checkpoint` as `choice` says; narrower weights are a copy (the float32 model may
        still serve another engine). `rows`: the cache rows (None: sized from the memory available now)."""
        model, float32_model = checkpoint.model, None
        if choice.weight_dtype != "float32":
            float32_model = model if choice.narrow_from > 1 else None
            model = copy.deepcopy(model).to(DTYPES[choice.weight_dtype])
        weight = model.wte.weight
        cache_dtype = DTYPES.get(self.settings.kv_cache_dtype) or DTYPES.get(choice.cache_dtype)
        rows = rows or self._batch_rows(model.config, cache_dtype or weight.dtype, weight.device)
        policy = self._policy(choice, threads, rows, weight.device.type)
        s = self.settings
        engine = await asyncio.to_thread(
            Engine, name, model, checkpoint.tokenizer.vocabulary, rows, s.max_queue, self.metrics, cache_dtype,
            s.window_slide, policy, s.decode_attention, s.stream_interval_ms / 1000, float32_model)
        return Serving(engine, model, float32_model)

    def _policy(self, choice: DecodeChoice, threads: int, rows: int, device_type: str) -> DecodePolicy:
        """The measured plan with the settings' overrides, bounded by what this cache and device can run; an
        override that cannot apply as given is logged."""
        s = self.settings
        split = choice.split_from if s.split_decode_from is None else s.split_decode_from
        if device_type != "cpu" or max(split, threads) > rows:
            split = 0  # row groups are a CPU threading choice, and need a batch the cache can hold
        policy = DecodePolicy(threads, s.parallel_decode_from or choice.parallel_from, choice.narrow_from, split,
                              max_batch=rows, lone_transposed=choice.lone_transposed,
                              ggml_up_to=self._ggml_up_to(choice, rows, device_type))
        if s.split_decode_from and policy.reported_split_from != s.split_decode_from:
            log.warning("--split-decode-from %d applies as %d (%d torch threads, each group needs a row; %d cache "
                        "rows; device %s; 0: never)", s.split_decode_from, policy.reported_split_from, threads,
                        rows, device_type)
        if s.parallel_decode_from and threads > 1 and policy.reported_parallel_from != s.parallel_decode_from:
            log.warning("--parallel-decode-from %d is never reached: the cache holds %d rows", s.parallel_decode_from,
                        rows)
        return policy

    def _ggml_up_to(self, choice: DecodeChoice, rows: int, device_type: str) -> int:
        """Batches decoded on ggml: as measured (`auto`), all or none as --decode-runner says; CPU only."""
        runner = self.settings.decode_runner
        if device_type != "cpu" or runner == "torch" or not ggml_available():
            if runner == "ggml":
                log.warning("--decode-runner ggml needs llama-cpp-python on CPU; decoding on torch")
            return 0
        return min(rows, LLAMA_MAX_SEQ) if runner == "ggml" else min(choice.ggml_up_to, rows)

    def _batch_rows(self, config: ModelConfig, cache_dtype: torch.dtype, device: torch.device) -> int:
        """Cache rows for a model: max_batch_size (default 256) within its KV-cache budget (memory.size_cache)."""
        s = self.settings
        available = available_memory(device) if s.max_kv_cache_bytes is None else 0
        size = size_cache(config, cache_dtype, s.max_batch_size, s.max_kv_cache_bytes, s.kv_cache_memory_fraction,
                          available)
        log.info("KV cache: %d rows of %d KiB (%d MiB, bound by %s; budget %d MiB)", size.rows,
                 size.row_bytes >> 10, size.cache_bytes >> 20, size.bound_by, size.budget_bytes >> 20)
        return size.rows


def restrict(choice: DecodeChoice, measure_dtype: bool) -> DecodeChoice:
    """Only the thread plan where the load named its dtype: the weights and KV cache stay as loaded, and every
    batch decodes on torch (ggml's numbers are not the named dtype's; --decode-runner ggml still applies)."""
    return choice if measure_dtype else choice.model_copy(update={"weight_dtype": "float32", "cache_dtype": "",
                                                                   "narrow_from": 1, "ggml_up_to": 0})


def same_plan(a: Engine, b: Engine) -> bool:
    """Whether two engines decode alike: weights, KV cache and the reported thread plan."""
    def plan(e: Engine) -> tuple[object, ...]:
        p = e.policy
        weights = e.model_runner.model.wte.weight.dtype
        return (weights, e.cache.k.dtype, p.reported_parallel_from, p.narrow_from, p.reported_split_from,
                p.lone_transposed, p.ggml_up_to)
    return plan(a) == plan(b)
