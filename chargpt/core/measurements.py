"""Per-host measurements: fp32 against bf16 at the model's real shapes (GEMM peaks, training steps), timed robustly.

Method, robust to a shared machine: every variant is warmed up, then timed in short trials (each long enough to
dwarf the timer) interleaved round-robin with the other variants, so a burst of outside load hits all of them
alike; decisions use each variant's fastest trial (outside load only ever adds time) and the record keeps the
median and the spread (slowest / fastest - 1) to show how noisy the measurement was. Comparisons between two
variants use `speedup`: the median of their per-round ratios, since a round's two trials ran seconds apart and
share whatever load the host had then (a single best trial each let one lucky trial decide).

The figures are cached per host by chargpt.core.calibration. torch is imported lazily: clients and settings
import this module without it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from chargpt.core.config import ModelConfig

if TYPE_CHECKING:
    import torch

BF16_MARGIN = 0.03  # bf16 must win by more than this to be chosen: a tie keeps fp32's exactness
GEMM_SIZE = 1024
GEMM_PROBE_SIZE = 256  # a first call this size finds a dtype too slow for GEMM_SIZE calls (emulated bf16)
GEMM_CALL_S = 0.25  # the longest one timed GEMM call should take: smaller matrices for a slower dtype
HOPELESS_BF16 = 0.5  # bf16 GEMMs under half fp32's speed: bf16 cannot be the faster precision
HOPELESS_CALL_S = 0.5  # ... and not worth timing when one call would take longer than this


class Timing(BaseModel):
    """Seconds per call of one variant over its trials."""

    model_config = ConfigDict(frozen=True)

    best_s: float
    median_s: float
    spread: float  # slowest trial / fastest - 1
    trials: int
    samples: tuple[float, ...] = ()  # seconds per call in each round, in round order


def speedup(fast: Timing, slow: Timing) -> float:
    """How many times faster `fast` ran than `slow` (> 1: faster): the median of the per-round ratios when both
    were timed in the same rounds of `time_interleaved`, else the ratio of their best trials."""
    if fast.samples and len(fast.samples) == len(slow.samples):
        return statistics.median(s / f for f, s in zip(fast.samples, slow.samples, strict=True))
    return slow.best_s / fast.best_s


class GemmPeak(BaseModel):
    """The host's matmul throughput at GEMM_SIZE^3, fp32 and bf16."""

    model_config = ConfigDict(frozen=True)

    gflops_fp32: float
    gflops_bf16: float
    fp32: Timing
    bf16: Timing

    @property
    def bf16_hopeless(self) -> bool:
        """bf16 GEMMs so far below fp32's that bf16 cannot be the faster precision, and timing a model in it
        would take minutes (issue 25: emulated bf16 at 1 GFLOP/s against fp32's 105 on an AVX2-only host)."""
        return self.gflops_bf16 < HOPELESS_BF16 * self.gflops_fp32

    def seconds(self, gflop: float, precision: str) -> float:
        """Seconds `gflop` of matmul work takes at this host's peak in `precision` ("fp32" or "bf16")."""
        return gflop / (self.gflops_bf16 if precision == "bf16" else self.gflops_fp32)

    def hopeless(self, precision: str, gflop: float, limit_s: float = HOPELESS_CALL_S) -> bool:
        """Whether work of `gflop` in `precision` is not worth running: bf16 where it is hopeless and the work
        would take over `limit_s` at the bf16 peak (small work is still cheap to time)."""
        return precision == "bf16" and self.bf16_hopeless and self.seconds(gflop, "bf16") > limit_s


class TrainStep(BaseModel):
    """One forward+backward pass of a model at a batch, fp32 against bf16 autocast."""

    model_config = ConfigDict(frozen=True)

    tokens: int  # per pass
    threads: int
    fp32: Timing
    bf16: Timing | None  # None where bf16 autocast cannot run

    @property
    def bf16_faster(self) -> bool:
        return self.bf16 is not None and speedup(self.bf16, self.fp32) * (1 - BF16_MARGIN) > 1

    @property
    def best_tokens_per_s(self) -> float:
        best = min(self.fp32.best_s, self.bf16.best_s if self.bf16_faster and self.bf16 else self.fp32.best_s)
        return self.tokens / best


def time_interleaved(variants: Mapping[str, Callable[[], object]], trials: int = 5, trial_s: float = 0.05,
                     budget_s: float = 3.0) -> dict[str, Timing]:
    """Seconds per call of each variant: warmed up, then `trials` rounds of short trials, interleaved.

    A trial repeats the call enough times to last about `trial_s`; each round rotates the order so no variant
    always runs first (cold caches) or last. Stops early (after at least 3 rounds) once `budget_s` is spent.
    """
    names = list(variants)
    repeats: dict[str, int] = {}
    for name in names:  # warm-up: the first call allocates and picks kernels; the second is timed for sizing
        variants[name]()
        started = time.perf_counter()
        variants[name]()
        repeats[name] = max(1, round(trial_s / max(time.perf_counter() - started, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.perf_counter() + budget_s
    for round_ in range(trials):
        if round_ >= 3 and time.perf_counter() > deadline:
            break
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            started = time.perf_counter()
            for _ in range(repeats[name]):
                variants[name]()
            samples[name].append((time.perf_counter() - started) / repeats[name])
    return {name: _timing(s) for name, s in samples.items()}


def _timing(samples: list[float]) -> Timing:
    best = min(samples)
    return Timing(best_s=best, median_s=statistics.median(samples), spread=max(samples) / best - 1,
                  trials=len(samples), samples=tuple(samples))


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_gemm_peak(device: str = "cpu", size: int = GEMM_SIZE, budget_s: float = 2.0) -> GemmPeak:
    """GFLOP/s of a size^3 matmul in fp32 and in bf16, best trial of several.

    A dtype whose size^3 call would take over GEMM_CALL_S (emulated bf16: 3 s at 1024 on an AVX2-only host) is
    timed at a smaller size instead, so the measurement takes seconds on every host.
    """
    import torch

    dev = torch.device(device)
    with torch.inference_mode():
        calls = {name: _gemm_call(dtype, size, dev) for name, dtype in (("fp32", torch.float32),
                                                                       ("bf16", torch.bfloat16))}
        t = time_interleaved({name: call for name, (call, _) in calls.items()}, budget_s=budget_s)
    gflops = {name: 2 * n**3 / 1e9 / t[name].best_s for name, (_, n) in calls.items()}
    return GemmPeak(gflops_fp32=gflops["fp32"], gflops_bf16=gflops["bf16"], fp32=t["fp32"], bf16=t["bf16"])


def _gemm_call(dtype: torch.dtype, size: int, dev: torch.device) -> tuple[Callable[[], None], int]:
    """A matmul of `dtype` at `size`, or smaller where a probe call says `size` would be too slow to time."""
    import torch

    def call_at(n: int) -> Callable[[], None]:
        a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)

        def call() -> None:
            torch.mm(a, b)
            _sync(dev)
        return call

    probe = min(size, GEMM_PROBE_SIZE)
    call = call_at(probe)
    call()  # warm-up
    started = time.perf_counter()
    call()
    projected = (time.perf_counter() - started) * (size / probe) ** 3
    if projected <= GEMM_CALL_S:
        return call_at(size), size
    n = max(probe, int(size * (GEMM_CALL_S / projected) ** (1 / 3)) // 64 * 64)
    return call_at(n), n


def measure_train_step(config: ModelConfig, batch: int, device: str = "cpu", budget_s: float = 3.0,
                       with_bf16: bool = True) -> TrainStep:
    """A real forward+backward pass of `config` at `batch` sequences, fp32 and bf16 autocast, interleaved.

    Without `with_bf16` (the host's bf16 GEMMs make it hopeless) only fp32 is timed: bf16 is then None.
    Dropout is left out (it costs the same in both precisions) and so is the optimizer step (fp32 either way).
    """
    import torch

    from chargpt.core.model import GPT

    dev = torch.device(device)
    torch.manual_seed(0)
    model = GPT(config.model_copy(update={"dropout": 0.0})).to(dev).train()
    x = torch.randint(0, config.vocab_size, (batch, config.block_size), device=dev)  # (B, T)

    def step(dtype: torch.dtype | None) -> Callable[[], None]:
        def call() -> None:
            ctx = torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with ctx:
                _, loss = model(x, x)
            assert loss is not None
            loss.backward()
            model.zero_grad(set_to_none=True)
            _sync(dev)
        return call

    variants: dict[str, Callable[[], None]] = {"fp32": step(None)}
    if with_bf16 and (dev.type == "cpu" or (dev.type == "cuda" and torch.cuda.is_bf16_supported())):
        variants["bf16"] = step(torch.bfloat16)
    t = time_interleaved(variants, budget_s=budget_s)
    return TrainStep(tokens=batch * config.block_size, threads=torch.get_num_threads(), fp32=t["fp32"],
                     bf16=t.get("bf16"))


def train_gflop(config: ModelConfig, batch: int) -> float:
    """The matmul work of one forward+backward pass of `config` at `batch` sequences: 6 x parameters x tokens."""
    return 6 * config.parameter_count() * batch * config.block_size / 1e9
