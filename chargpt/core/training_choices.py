"""Decisions taken from a host's calibration: training precision and the CPU model size for `auto`.

Pure functions of the measured figures (chargpt.core.calibration), so tests feed them numbers directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from chargpt.core.config import ModelConfig
from chargpt.core.device import CPU_PROFILE, SIZE_PROFILES, SizeProfile
from chargpt.core.measurements import TrainStep

Precision = Literal["fp32", "bf16"]
PROBE_VOCAB = 65  # tiny Shakespeare's characters: the output layer's width when the corpus is not known yet

# The CPU preset was tuned (bench/train_quality.py, 100 s budgets) on a host that trained it at about 60k
# tokens/s. A host that runs a wider member of the same family (4 layers, block 64, batch 32) at least that fast
# sees as many tokens in the same time with a bigger model, so `auto` takes the widest such candidate; a slower
# host keeps the tuned preset. Widths go up by 1.5x and 2x with the learning rate the sweep found for 4x128.
CPU_TARGET_TOKENS_PER_S = 60_000.0
CPU_CANDIDATES: tuple[SizeProfile, ...] = (
    SIZE_PROFILES[CPU_PROFILE],
    SIZE_PROFILES[CPU_PROFILE].model_copy(update={"name": "cpu-96", "n_embd": 96, "learning_rate": 8e-3}),
    SIZE_PROFILES[CPU_PROFILE].model_copy(update={"name": "cpu-128", "n_embd": 128, "learning_rate": 8e-3}),
)


class SizeChoice(BaseModel):
    """The profile `auto` picked and the measured training throughput (tokens/s) of every candidate."""

    model_config = ConfigDict(frozen=True)

    profile: SizeProfile
    tokens_per_s: dict[str, float]
    precision: Precision


def train_precision(facts_type: str, bf16_supported: bool, step: TrainStep | None) -> Precision:
    """What `precision=auto` trains in: bf16 on CUDA where supported; elsewhere bf16 only if measured faster."""
    if facts_type == "cuda":
        return "bf16" if bf16_supported else "fp32"
    if facts_type != "cpu" or step is None:
        return "fp32"
    return "bf16" if step.bf16_faster else "fp32"


def profile_config(profile: SizeProfile, vocab_size: int = PROBE_VOCAB) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, n_layer=profile.n_layer, n_head=profile.n_head, n_embd=profile.n_embd,
                       block_size=profile.block_size, dropout=profile.dropout)


def choose_cpu_size(measure: Callable[[SizeProfile], TrainStep],
                    candidates: tuple[SizeProfile, ...] = CPU_CANDIDATES,
                    target_tokens_per_s: float = CPU_TARGET_TOKENS_PER_S) -> SizeChoice:
    """The widest candidate that trains at `target_tokens_per_s` or faster (at its best precision); else the first.

    Candidates are measured smallest first and the search stops at the first too slow to qualify (a wider one is
    slower still), so a slow host pays for one or two measurements.
    """
    chosen, throughput, precision = candidates[0], dict[str, float](), train_precision("cpu", True, None)
    for profile in candidates:
        step = measure(profile)
        throughput[profile.name] = round(step.best_tokens_per_s, 1)
        if profile is candidates[0]:
            precision = train_precision("cpu", True, step)
        if step.best_tokens_per_s < target_tokens_per_s:
            break
        chosen, precision = profile, train_precision("cpu", True, step)
    return SizeChoice(profile=chosen, tokens_per_s=throughput, precision=precision)

