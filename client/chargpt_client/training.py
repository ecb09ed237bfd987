"""Training options for create_job: every TrainingSpec field, typed; None leaves it to the server's default."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chargpt_client.deprecation import deprecated

LrSchedule = Literal["cosine", "constant", "linear"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
CompileMode = Literal["auto", "on", "off"]
Optimizer = Literal["adamw", "muon"]


def _help(text: str) -> Any:
    return Field(default=None, description=text)


class TrainingOptions(BaseModel):
    """Hyper-parameters of a training job (TrainingSpec). Only the types are checked here: the trainer holds the
    bounds and defaults and answers INVALID_ARGUMENT naming the field; an explicit 0 is sent as 0, never as unset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int | None = _help("optimizer steps to train for")
    batch_size: int | None = _help("sequences per optimizer step, across all processes")
    learning_rate: float | None = _help("peak learning rate")
    min_learning_rate: float | None = _help("final learning rate of the decay")
    warmup_steps: int | None = _help("linear warmup steps (0: none)")
    lr_schedule: LrSchedule | None = _help("learning-rate schedule after warmup")
    weight_decay: float | None = _help("AdamW weight decay on matrices (0: off)")
    grad_clip: float | None = _help("max global gradient norm (0: no clipping)")
    eval_interval: int | None = _help("steps between evaluations (0: at the end only)")
    sample_interval: int | None = _help("steps between text samples (0: none)")
    sample_length: int | None = _help("characters per text sample")
    seed: int | None = _help("seed for initialisation, data order and sampling")
    precision: Precision | None = _help("autocast precision (auto: bf16 on CUDA where supported; on CPU "
                                        "whichever this host measured faster)")
    compile: CompileMode | None = _help("torch.compile (auto: on CUDA only)")
    checkpoint_interval: int | None = _help("steps between latest checkpoints (0: at evaluations and the end)")
    grad_accumulation_steps: int | None = _help("gradient accumulation micro-steps per optimizer step")
    max_seconds: float | None = _help("wall-clock training budget in seconds: the schedule ends at the deadline "
                                      "(with max_steps too, whichever comes first)")
    optimizer: Optimizer | None = _help("adamw, or muon for the hidden matrices with AdamW for the rest")

    def given(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return self.model_dump(exclude_none=True)


_ENUM_FIELDS = ("lr_schedule", "precision", "compile", "optimizer")


def options_from_keywords(training: TrainingOptions | None, keywords: dict[str, Any]) -> TrainingOptions | None:
    """create_job's training fields given as keywords (0.1's `create_job(corpus, max_steps=...)`, deprecated) as
    TrainingOptions; `training` when there are none."""
    if not keywords:
        return training
    unknown = [name for name in keywords if name not in TrainingOptions.model_fields]
    if unknown:
        raise UnknownTrainingField(f"create_job() got an unexpected keyword argument {unknown[0]!r} (unknown "
                                   f"training field; known: {', '.join(TrainingOptions.model_fields)})")
    if training is not None:
        raise TypeError("create_job() takes training=TrainingOptions(...) or training keywords, not both")
    replacement = ", ".join(f"{name}={value!r}" for name, value in keywords.items())
    deprecated(f"create_job({', '.join(f'{name}=...' for name in keywords)})",
               f"create_job(..., training=TrainingOptions({replacement}))", since="0.2.0", stacklevel=3)
    # 0.1 took enum values in any case ("FP32", "Cosine")
    values = {name: value.lower() if isinstance(value, str) and name in _ENUM_FIELDS else value
              for name, value in keywords.items()}
    return TrainingOptions.model_validate(values)


class UnknownTrainingField(TypeError, ValueError):
    """A keyword create_job does not know: a TypeError, as Python says, and the ValueError 0.1 raised."""


@dataclass(frozen=True)
class OptionField:
    """One TrainingOptions field as a command-line flag would take it."""

    name: str
    kind: type  # int, float or str
    choices: tuple[str, ...] | None
    help: str


def option_fields() -> list[OptionField]:
    """TrainingOptions' fields with their value type (and choices for the enums), for building CLI flags."""
    out = []
    for name, info in TrainingOptions.model_fields.items():
        (inner,) = [a for a in typing.get_args(info.annotation) if a is not types.NoneType]
        if typing.get_origin(inner) is Literal:
            out.append(OptionField(name, str, typing.get_args(inner), info.description or ""))
        else:
            out.append(OptionField(name, inner, None, info.description or ""))
    return out
