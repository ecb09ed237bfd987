"""Every training default that follows from the size profile or from other fields, derived in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard

from chargpt.core.device import SizeProfile

INTERVALS = ("eval_interval", "sample_interval", "checkpoint_interval")
FITTED = ("warmup_steps", *INTERVALS)  # under a time budget, these follow its step horizon unless the request set them
MIN_LR_RATIO = 0.1  # where the decay ends without a size profile: a tenth of the peak (SizeProfile's default too)
RUN_FRACTION = 10  # intervals are a tenth of the run, the warmup at most a tenth
# Fine-tuning: the weights are already trained, so a third of the size's peak learning rate and a short warmup
# (a fiftieth of the run, at most the size's) adapt them without wiping out what they know.
FINETUNE_LR_SCALE = 1 / 3
FINETUNE_WARMUP_FRACTION = 50


def training_defaults(given: Mapping[str, Any], profile: SizeProfile | None = None,
                      finetune: bool = False) -> dict[str, Any]:
    """The training fields a request set (`given`), completed with every default that follows from them.

    With a size profile (what the trainer resolves a request with): its max_steps, batch size, learning rate
    (a third of it for a fine-tune), optimizer, warmup (at most a tenth of the run, a fiftieth for a fine-tune)
    and LR floor ratio. Without one (a plan written by hand: tests, benchmarks) the warmup must be given and the
    floor is a tenth. Only a time budget and no max_steps means no step limit (max_steps None); then the warmup
    is the profile's and the unset intervals are None until the budget fits them (TrainingPlan.fit_to_budget).
    """
    values = dict(given)
    budget = values.get("max_seconds") is not None
    if budget and "fit_to_budget" not in values:
        values["fit_to_budget"] = tuple(name for name in FITTED if name not in given)
    if profile is not None:
        values = {**_size_values(profile, finetune, budget_only=budget and "max_steps" not in given), **values}
    lr, steps = values.get("learning_rate"), values.get("max_steps")
    if _is_number(lr) and "min_learning_rate" not in values:
        values["min_learning_rate"] = lr * (MIN_LR_RATIO if profile is None else profile.min_lr_ratio)
    if profile is not None and "warmup_steps" not in values:
        share = steps // (FINETUNE_WARMUP_FRACTION if finetune else RUN_FRACTION) if _is_int(steps) else None
        values["warmup_steps"] = profile.warmup_steps if share is None else max(0, min(profile.warmup_steps, share))
    if steps is None or _is_int(steps):
        for name in INTERVALS:
            values.setdefault(name, None if steps is None else max(1, steps // RUN_FRACTION))
    return values


def _size_values(profile: SizeProfile, finetune: bool, budget_only: bool) -> dict[str, Any]:
    return {"max_steps": None if budget_only else profile.max_steps, "batch_size": profile.batch_size,
            "learning_rate": profile.learning_rate * (FINETUNE_LR_SCALE if finetune else 1),
            "optimizer": profile.optimizer}


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
