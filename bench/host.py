"""The host's GEMM peaks and the one rule every benchmark uses to skip a variant they make hopeless.

On an AVX2-only host bf16 is emulated (issue 25: fp32 GEMMs at ~105 GFLOP/s, bf16 at ~1), so a notebook-size
bf16 training step takes minutes and `bench.train_throughput` had not finished after 13 minutes. A benchmark
asks `skip_reason` before running a variant, with the variant's matmul work per timed call; a hopeless one is
a row saying why instead of a measurement.
"""

from __future__ import annotations

import functools

from chargpt.core.measurements import GemmPeak, measure_gemm_peak

VARIANT_CALL_S = 2.0  # a timed call (a training or decode step) longer than this at the bf16 peak is not run


@functools.cache
def host_peak() -> GemmPeak:
    """This host's fp32 and bf16 GEMM peaks, measured once per process (seconds, even with emulated bf16)."""
    return measure_gemm_peak()


def skip_reason(precision: str, gflop_per_call: float, peak: GemmPeak | None = None,
                limit_s: float = VARIANT_CALL_S) -> str | None:
    """Why a variant computing in `precision` ("fp32", "bf16", or a torch dtype's name) should not run, or None.

    Only bf16 is ever skipped: where its GEMMs run at under half fp32's speed (it cannot win there) and one call
    of `gflop_per_call` would take over `limit_s` at its peak.
    """
    peak = peak or host_peak()
    name = "bf16" if precision in ("bf16", "bfloat16", "torch.bfloat16") else "fp32"
    if not peak.hopeless(name, gflop_per_call, limit_s):
        return None
    return (f"skipped: bf16 GEMMs run at {peak.gflops_bf16:.1f} GFLOP/s against fp32's {peak.gflops_fp32:.0f} "
            f"on this host, so one call would take ~{peak.seconds(gflop_per_call, 'bf16'):.0f} s")
