"""Serving choices by measurement on CPU: the KV-cache dtype, and per decode batch size the weights' dtype and
the torch thread count.

The engine's real decode step (FastDecoder) is timed on the loaded model's own shapes, interleaved and cached per
host like the trainer's calibration (chargpt.core.calibration), so a host where bf16 GEMMs are fast serves in bf16
and one where they are slow stays in fp32 (issue 13 saw both, with the same CPU flags). One size does not fit all
batches: on a host measured for issue 13, bf16 weights decoded a 64-row batch 1.35x faster than fp32 but a lone
stream 0.78x as fast (a one-row matmul has no fast bf16 kernel without AMX), and a second thread paid at batch 64
but could cost at batch 1. So the choice is a small plan: from which batch size the narrow weights are used, from
which every thread is, and from which a step runs as row groups of one thread each (fast_decode.RowGroups; on
such a host two 64-row halves ran a bf16 step 1.2-1.3x faster than both threads on every op, and float32 no faster).
A lone stream's step is a chain of matrix-vector products, and the layout of a matrix decides their speed: on the
AVX2 host of issue 25, (in, out) copies of the widening matrices (c_attn, c_fc) made a float32 step 1.25x faster
(fast_decode.FastDecoder's lone_transposed); whether they do is measured too.
Last, the torch plan so chosen races llama.cpp's ggml (engine/ggml_runner.py) at a few batch sizes: ggml splits
a lone row's matrix-vector products over every core, which torch does not do profitably at these sizes, and
small batches decode on ggml up to the largest size where it won every race (engine/runner_choice.py).
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict

from chargpt.core.calibration import Calibrator
from chargpt.core.device import set_torch_threads
from chargpt.core.measurements import BF16_MARGIN, Timing, speedup, time_interleaved
from chargpt.core.model import GPT, KVCache
from inference_service.decode_policy import DecodePolicy
from inference_service.engine.ggml_runner import GgmlRunner, ggml_available, placeholder_vocabulary, timed_step
from inference_service.fast_decode import FastDecoder, RowGroups

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# weights / KV cache; a bf16 cache halves attention's memory traffic but CPU SDPA reads bf16 slowly (issue 13)
DTYPE_VARIANTS = {"float32/float32": (torch.float32, torch.float32),
                  "bfloat16/float32": (torch.bfloat16, torch.float32),
                  "bfloat16/bfloat16": (torch.bfloat16, torch.bfloat16)}
PARALLEL_MARGIN = 0.95  # every thread must save at least 5% over one to be worth the fork/join
LAYOUT_MARGIN = 0.95  # the lone row's transposed copies must save at least 5% to be worth their memory
RUNNER_MARGIN = 0.9  # ggml must be 10% faster: its numbers differ from the model's own (engine/ggml_runner.py)
RUNNER_BATCHES = (1, 4, 16, 64)  # the batch sizes raced (those up to the big batch)


class DecodeCalibration(BaseModel):
    """Seconds per decode step: each dtype variant at the big batch (every thread), then a ladder of batch sizes
    in the chosen cache dtype, each with fp32 and the chosen weights, on one thread, on all ("B8:float32:t2") and
    as one row group per thread ("B8:float32:g2"); and a lone float32 row on one thread with the model's own
    matrices and with transposed copies of the widening ones ("plain", "transposed")."""

    model_config = ConfigDict(frozen=True)

    big_batch: int
    max_threads: int
    dtypes_big: dict[str, Timing]
    ladder: dict[str, Timing]
    lone: dict[str, Timing] = {}
    runners: dict[str, Timing] = {}  # "B4:torch" (the plan chosen from the above) against "B4:ggml:t1", ":t2"..
    load_average: float = 0.0  # the host's 1-minute load average when measured: a busy host skews the choice


class DecodeChoice(BaseModel):
    """Decode batches of at least narrow_from rows use weight_dtype (smaller ones float32); batches of at least
    parallel_from rows use every torch thread (smaller ones one); from split_from rows (0: never) a step runs as
    one row group per thread. A lone float32 row multiplies by (in, out) copies of the widening matrices where
    `lone_transposed`."""

    model_config = ConfigDict(frozen=True)

    weight_dtype: str
    cache_dtype: str
    parallel_from: int
    narrow_from: int = 1
    split_from: int = 0
    lone_transposed: bool = False
    ggml_up_to: int = 0  # batches of at most this many rows decode on ggml (0: none)


def fastest_variant(big: dict[str, Timing]) -> str:
    """The dtype variant fastest at the big batch; a narrower one must beat fp32 by BF16_MARGIN."""
    reference = "float32/float32"
    gains = {n: speedup(t, big[reference]) * (1 if n == reference else 1 - BF16_MARGIN) for n, t in big.items()}
    return max(gains, key=lambda n: gains[n])


def ladder_batches(c: DecodeCalibration) -> list[int]:
    return sorted({int(key.split(":")[0][1:]) for key in c.ladder})


def best_at(c: DecodeCalibration, batch: int, groups: bool = True) -> tuple[str, str]:
    """(weights, "t1" | "tN" | "gN") fastest at `batch` (row groups only if `groups`); narrow weights and every
    thread (either way) must each win by their margin."""
    reference = c.ladder[f"B{batch}:float32:t1"]
    gains = {}
    for key, timing in c.ladder.items():
        b, weights, threads = key.split(":")
        if int(b[1:]) == batch and (groups or not threads.startswith("g")):
            margin = (1 if weights == "float32" else 1 - BF16_MARGIN) * (1 if threads == "t1" else PARALLEL_MARGIN)
            gains[(weights, threads)] = speedup(timing, reference) * margin
    return max(gains, key=lambda k: gains[k])


def crossover(batches: list[int], wins: dict[int, bool], never: int) -> int:
    """The smallest measured batch from which `wins` holds at it and at every larger one (`never` if none)."""
    start = never
    for batch in reversed(batches):
        if not wins[batch]:
            break
        start = batch
    return start


def decide(c: DecodeCalibration) -> DecodeChoice:
    lone = bool(c.lone) and speedup(c.lone["transposed"], c.lone["plain"]) * LAYOUT_MARGIN > 1
    return _decide_threads(c).model_copy(update={"lone_transposed": lone, "ggml_up_to": ggml_up_to(c)})


def ggml_up_to(c: DecodeCalibration) -> int:
    """The largest raced batch up to which ggml, at its faster thread count, won every race by RUNNER_MARGIN (0: it
    lost at one row). While serving, ggml_threads.py picks the count again as the host's load changes."""
    up_to = 0
    for batch in sorted({int(key.split(":")[0][1:]) for key in c.runners}):
        torch_step = c.runners[f"B{batch}:torch"]
        ggml = [speedup(t, torch_step) for key, t in c.runners.items() if key.startswith(f"B{batch}:ggml")]
        if max(ggml) * RUNNER_MARGIN <= 1:
            break
        up_to = batch
    return up_to


def _decide_threads(c: DecodeCalibration) -> DecodeChoice:
    weights, cache = fastest_variant(c.dtypes_big).split("/")
    batches = ladder_batches(c)
    best = {b: best_at(c, b) for b in batches}
    never = c.big_batch + 1
    narrow_from = crossover(batches, {b: best[b][0] != "float32" for b in batches}, never)
    if weights == "float32" or narrow_from == never:
        weights, narrow_from = "float32", 1
    if c.max_threads == 1:
        return DecodeChoice(weight_dtype=weights, cache_dtype=cache, parallel_from=1, narrow_from=narrow_from)
    split_from = crossover(batches, {b: best[b][1].startswith("g") for b in batches}, never)
    # Below split_from a batch runs on one thread or on all: there only those two compete.
    parallel_from = crossover(batches, {b: b >= split_from or best_at(c, b, groups=False)[1] != "t1"
                                        for b in batches}, never)
    return DecodeChoice(weight_dtype=weights, cache_dtype=cache, parallel_from=parallel_from, narrow_from=narrow_from,
                        split_from=0 if split_from == never else split_from)


def _step(model: GPT, batch: int, cache_dtype: torch.dtype, threads: int, groups: RowGroups | None = None,
          lone_transposed: bool = False) -> Callable[[], None]:
    """One decode step of `batch` rows halfway through the context window (a typical attention length), on
    `threads` torch threads, or as `groups` of one thread each."""
    cache = KVCache(model.config, batch, dtype=cache_dtype)
    decoder = FastDecoder(model, cache, lone_transposed=lone_transposed)
    tokens = torch.randint(0, model.config.vocab_size, (batch,))
    position = model.config.block_size // 2
    positions = torch.full((batch,), position, dtype=torch.long)
    threads = 1 if groups is not None else threads

    def call() -> None:
        set_torch_threads(threads)
        if groups is not None:
            groups.step(decoder, tokens, [position] * batch)
        else:
            decoder.step(tokens, positions, position + 1)
    return call


def measure_decode(model: GPT, big_batch: int, max_threads: int, race: bool = True) -> DecodeCalibration:
    """Time the engine's decode step on `model` (fp32, on CPU), then (if `race`) race the chosen plan against ggml
    where llama-cpp-python is installed; restores torch's thread count."""
    before = torch.get_num_threads()
    load = os.getloadavg()[0]
    models = {torch.float32: model, torch.bfloat16: copy.deepcopy(model).to(torch.bfloat16)}
    groups = RowGroups(max_threads) if max_threads > 1 else None
    try:
        with torch.inference_mode():
            c = _measure_torch(models, big_batch, max_threads, groups).model_copy(update={"load_average": load})
            if race and ggml_available():
                c = c.model_copy(update={"runners": _race_runners(models, c, groups)})
    finally:
        if groups is not None:
            groups.close()
        torch.set_num_threads(before)
    return c


def _measure_torch(models: dict[torch.dtype, GPT], big_batch: int, max_threads: int, groups: RowGroups | None
                   ) -> DecodeCalibration:
    """The dtype variants at the big batch, the thread ladder, and the lone row's layouts."""
    model = models[torch.float32]
    big = time_interleaved({n: _step(models[w], big_batch, c, max_threads)
                            for n, (w, c) in DTYPE_VARIANTS.items()}, trial_s=0.03, budget_s=2.0, trials=9)
    weights, cache = DTYPE_VARIANTS[fastest_variant(big)]
    variants = {f"B{b}:{str(w).split('.')[-1]}:t{t}": _step(models[w], b, cache, t)
                for b in sorted({1, min(8, big_batch), big_batch}) for w in {torch.float32, weights}
                for t in {1, max_threads}}
    if groups is not None:
        variants |= {f"B{b}:{str(w).split('.')[-1]}:g{max_threads}": _step(models[w], b, cache, 1, groups)
                     for b in sorted({min(8, big_batch), big_batch}) if b >= max_threads
                     for w in {torch.float32, weights}}
    ladder = time_interleaved(variants, trial_s=0.03, budget_s=4.0, trials=9)
    lone = time_interleaved({"plain": _step(model, 1, cache, 1),
                             "transposed": _step(model, 1, cache, 1, lone_transposed=True)},
                            trial_s=0.03, budget_s=1.0, trials=9)
    return DecodeCalibration(big_batch=big_batch, max_threads=max_threads, dtypes_big=big, ladder=ladder,
                             lone=lone)


def _race_runners(models: dict[torch.dtype, GPT], c: DecodeCalibration, groups: RowGroups | None
                  ) -> dict[str, Timing]:
    """The torch plan chosen from `c` against ggml, at each of RUNNER_BATCHES up to the big batch, interleaved."""
    choice = decide(c)
    policy = DecodePolicy(c.max_threads, choice.parallel_from, choice.narrow_from, choice.split_from,
                          lone_transposed=choice.lone_transposed)
    narrow, cache = DTYPES[choice.weight_dtype], DTYPES[choice.cache_dtype or choice.weight_dtype]
    model = models[torch.float32]
    batches = [b for b in RUNNER_BATCHES if b <= c.big_batch]
    position = model.config.block_size // 2
    ggml = GgmlRunner(model, placeholder_vocabulary(model.config.vocab_size), sum(batches), c.max_threads)
    try:
        variants: dict[str, Callable[[], object]] = {}
        for first, b in zip(itertools.accumulate([0, *batches]), batches, strict=False):
            weights = models[narrow if policy.narrow_for(b) else torch.float32]
            row_groups = groups if policy.groups_for(b) > 1 else None
            variants[f"B{b}:torch"] = _step(weights, b, cache, policy.threads_for(b), row_groups,
                                            lone_transposed=b == 1 and policy.lone_transposed)
            variants |= {f"B{b}:ggml:t{t}": timed_step(ggml, b, position, first, t) for t in {1, c.max_threads}}
        return time_interleaved(variants, trial_s=0.03, budget_s=3.0, trials=9)
    finally:
        ggml.close()


def decode_entry(model: GPT, big_batch: int, max_threads: int, race: bool = True) -> str:
    """The cache entry of this model's shapes at this batch and thread count, with or without the runners' race."""
    c = model.config
    return (f"decode:L{c.n_layer}-H{c.n_head}-C{c.n_embd}-T{c.block_size}-V{c.vocab_size}-B{big_batch}"
            f":threads{max_threads}:groups:lone{':ggml-threads' if race else ''}")  # older entries lack parts


def cached_decode(calibrator: Calibrator, model: GPT, big_batch: int, max_threads: int, race: bool = True
                  ) -> DecodeChoice | None:
    """The choice from this host's cached figures (None until they are measured); never measures."""
    found = calibrator.cached(decode_entry(model, big_batch, max_threads, race), DecodeCalibration)
    return decide(found) if found is not None else None


def calibrated_decode(calibrator: Calibrator, model: GPT, big_batch: int, max_threads: int, race: bool = True
                      ) -> DecodeChoice:
    """The measured choice for this model's shapes on this host (measured once, then read from the cache)."""
    name = decode_entry(model, big_batch, max_threads, race)
    return decide(calibrator.get(name, DecodeCalibration, lambda: measure_decode(model, big_batch, max_threads, race)))
