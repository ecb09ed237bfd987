"""The objects one engine step passes between its parts: scheduler -> model runner -> output processor -> scheduler."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inference_service.engine.request import Finish, GenRequest


@dataclass
class SchedulerOutput:
    """What one step runs. The `decode` requests hold cache rows 0..D-1 and each decodes one character (the rows in
    `slides` first rebuild their window); the `prefill` requests join in rows D.. and get their first character from
    the prefill. `rows` is all of them in row order, the order of the step's logits.

    The lists are the scheduler's own, read before this step's finished rows are freed (no per-step copies)."""

    rows: list[GenRequest]
    decode: list[GenRequest]
    prefill: list[GenRequest]
    slides: list[int]  # decode rows whose sequence filled the context window
    aborted: list[tuple[GenRequest, Finish]]  # cancelled or past their deadline, already out of the batch
    rows_changed: bool  # the batch's membership changed since the previous step (the sampler rebuilds its rows)


@dataclass
class ModelRunnerOutput:
    """Next-character logits (B, V) for every scheduled row, in row order: the decode rows, then the prefilled."""

    logits: torch.Tensor


@dataclass
class FinishedRows:
    """The rows whose requests the output processor finished this step, ascending, and those among them whose
    logits were not finite (their keys and values may be NaN)."""

    rows: list[int]
    non_finite: list[int]
