"""Serving choices by measurement on CPU: weight and KV-cache dtypes, and the batch from which decode uses every thread.

The engine's real decode step (FastDecoder) is timed on the loaded model's own shapes, interleaved and cached per
host like the trainer's calibration (chargpt.core.calibration), so a host where bf16 GEMMs are fast serves in bf16
and one where they are slow stays in fp32 (issue 13 saw both, with the same CPU flags).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict

from chargpt.core.calibration import Calibrator, Timing, speedup, time_interleaved
from chargpt.core.model import GPT, KVCache
from inference_service.fast_decode import FastDecoder

# weights / KV cache; a bf16 cache halves attention's memory traffic but CPU SDPA reads bf16 slowly (issue 13)
DTYPE_VARIANTS = {"float32/float32": (torch.float32, torch.float32),
                  "bfloat16/float32": (torch.bfloat16, torch.float32),
                  "bfloat16/bfloat16": (torch.bfloat16, torch.bfloat16)}
SMALL_BATCH_SLACK = 1.10  # the big batch decides, unless that choice is more than 10% slower for a lone stream
PARALLEL_MARGIN = 0.95  # every thread must save at least 5% over one to be worth the fork/join


class DecodeCalibration(BaseModel):
    """Seconds per decode step of each variant: dtypes at the big batch (all threads) and at batch 1 (one thread);
    one thread against all at a ladder of batch sizes in the chosen dtypes."""

    model_config = ConfigDict(frozen=True)

    big_batch: int
    max_threads: int
    dtypes_big: dict[str, Timing]
    dtypes_single: dict[str, Timing]
    threads: dict[str, Timing]  # "B8:t1", "B8:t2", ...
    load_average: float = 0.0  # the host's 1-minute load average when measured: a busy host skews the choice


class DecodeChoice(BaseModel):
    model_config = ConfigDict(frozen=True)

    weight_dtype: str
    cache_dtype: str
    parallel_from: int


def choose_dtypes(big: dict[str, Timing], single: dict[str, Timing]) -> str:
    """The variant fastest at the big batch, unless it loses more than SMALL_BATCH_SLACK to fp32 for one stream."""
    reference = "float32/float32"
    for name in sorted(big, key=lambda n: -speedup(big[n], big[reference])):
        lone = single.get(f"{name.split('/')[0]}/float32")  # batch 1 is timed per weight dtype (fp32 cache)
        if lone is None or speedup(lone, single[reference]) * SMALL_BATCH_SLACK >= 1:
            return name
    return reference


def choose_parallel_from(threads: dict[str, Timing], max_threads: int, big_batch: int) -> int:
    """The smallest measured batch from which every thread beats one (and keeps beating it at larger batches)."""
    batches = sorted({int(k.split(":")[0][1:]) for k in threads})
    parallel_from = big_batch + 1  # never: one thread always did as well
    for batch in reversed(batches):
        if speedup(threads[f"B{batch}:t{max_threads}"], threads[f"B{batch}:t1"]) * PARALLEL_MARGIN <= 1:
            break
        parallel_from = batch
    return parallel_from


def decide(c: DecodeCalibration) -> DecodeChoice:
    weights, cache = choose_dtypes(c.dtypes_big, c.dtypes_single).split("/")
    parallel_from = choose_parallel_from(c.threads, c.max_threads, c.big_batch) if c.max_threads > 1 else 1
    return DecodeChoice(weight_dtype=weights, cache_dtype=cache, parallel_from=parallel_from)


def _step(model: GPT, batch: int, cache_dtype: torch.dtype, threads: int | None = None) -> Callable[[], None]:
    """One decode step of `batch` rows halfway through the context window (a typical attention length)."""
    cache = KVCache(model.config, batch, dtype=cache_dtype)
    decoder = FastDecoder(model, cache)
    tokens = torch.randint(0, model.config.vocab_size, (batch,))
    position = model.config.block_size // 2
    positions = torch.full((batch,), position, dtype=torch.long)

    def call() -> None:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        decoder.step(tokens, positions, position + 1)
    return call


def measure_decode(model: GPT, big_batch: int, max_threads: int) -> DecodeCalibration:
    """Time the engine's decode step on `model` (fp32, on CPU); restores torch's thread count."""
    before = torch.get_num_threads()
    load = os.getloadavg()[0]
    models = {torch.float32: model, torch.bfloat16: copy.deepcopy(model).to(torch.bfloat16)}
    try:
        with torch.inference_mode():
            big = time_interleaved({n: _step(models[w], big_batch, c, max_threads)
                                    for n, (w, c) in DTYPE_VARIANTS.items()}, trial_s=0.03, budget_s=2.0, trials=9)
            single = time_interleaved({n: _step(models[w], 1, c, 1) for n, (w, c) in DTYPE_VARIANTS.items()
                                       if n != "bfloat16/bfloat16"}, trial_s=0.03, budget_s=1.0, trials=9)
            weights, cache = DTYPE_VARIANTS[choose_dtypes(big, single)]
            ladder = sorted({1, min(8, big_batch), big_batch})
            variants = {f"B{b}:t{t}": _step(models[weights], b, cache, t) for b in ladder for t in {1, max_threads}}
            threads = time_interleaved(variants, trial_s=0.03, budget_s=2.0, trials=9) if max_threads > 1 else {}
    finally:
        torch.set_num_threads(before)
    return DecodeCalibration(big_batch=big_batch, max_threads=max_threads, dtypes_big=big, dtypes_single=single,
                             threads=threads, load_average=load)


def calibrated_decode(calibrator: Calibrator, model: GPT, big_batch: int, max_threads: int) -> DecodeChoice:
    """The measured choice for this model's shapes on this host (measured once, then read from the cache)."""
    c = model.config
    name = (f"decode:L{c.n_layer}-H{c.n_head}-C{c.n_embd}-T{c.block_size}-V{c.vocab_size}-B{big_batch}"
            f":threads{max_threads}")
    return decide(calibrator.get(name, DecodeCalibration, lambda: measure_decode(model, big_batch, max_threads)))
