"""A calibration cache pre-filled with fixed figures, so that tests of the decisions do not depend on the host."""

from __future__ import annotations

from pathlib import Path

GEMM_FP32, GEMM_BF16 = 100.0, 50.0  # GFLOP/s
FP32_TOKENS_PER_SECOND = 20_000  # every CPU size candidate; bf16 half of it: auto keeps the CPU preset in fp32


def prefill(directory: Path) -> Path:
    """Write the fixed GEMM peak and CPU-candidate training figures for this host into `directory`."""
    from chargpt.core.calibration import Calibrator, train_entry
    from chargpt.core.measurements import GemmPeak, Timing, TrainStep
    from chargpt.core.training_choices import CPU_CANDIDATES, profile_config

    calibrator = Calibrator(directory)

    def timing(seconds: float) -> Timing:
        return Timing(best_s=seconds, median_s=seconds, spread=0.0, trials=3)

    calibrator.put("gemm", GemmPeak(gflops_fp32=GEMM_FP32, gflops_bf16=GEMM_BF16, fp32=timing(0.02),
                                    bf16=timing(0.04)))
    for profile in CPU_CANDIDATES:
        tokens = profile.batch_size * profile.block_size
        calibrator.put(train_entry(profile_config(profile), profile.batch_size),
                       TrainStep(tokens=tokens, threads=1, fp32=timing(tokens / FP32_TOKENS_PER_SECOND),
                                 bf16=timing(2 * tokens / FP32_TOKENS_PER_SECOND)))
    return directory
