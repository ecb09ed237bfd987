"""Fitting a time budget's evaluations, samples and checkpoints to it: phase cost estimates in, a phase plan out.

Pure functions of measured or estimated costs, so tests feed them numbers. On a slow host (issue 25: a
notebook-size step took 10-50 s, an evaluation of the whole validation split several steps, a 200-character
sample 90 s) the periodic work, not the steps, used up the budget; the plan shrinks each kind of work to a share
of the time left (fewer evaluation windows, shorter samples, longer intervals) or drops it, always keeping a
final evaluation and checkpoint, and says so when too few steps fit to learn anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EVAL_COST_PER_TOKEN = 1 / 3  # a forward pass costs about a third of a training step per token
SAMPLE_COST_PER_TOKEN = 2 / 3  # a sampled character: a batch-1 forward over the context, twice an eval's per token
FINAL_EVAL_SHARE = 0.05  # of the time left: the closing evaluation
PERIODIC_SHARES = {"eval_interval": 0.20, "sample_interval": 0.05, "checkpoint_interval": 0.05}
MIN_EVAL_WINDOWS = 2  # per split: fewer gives a loss too noisy to compare
MIN_SAMPLE_CHARS = 16  # shorter samples show nothing; drop them instead
MIN_USEFUL_STEPS = 20  # fewer optimizer steps barely move a model off its initial loss
RUN_FRACTION = 10  # periodic work runs about every tenth of the run (defaults.RUN_FRACTION)


@dataclass(frozen=True)
class PhaseCosts:
    """What each kind of work costs, in seconds (measured, or estimated from the step time)."""

    step: float
    eval_window: float  # one window of block_size tokens, forward only
    sample_char: float
    checkpoint: float


@dataclass(frozen=True)
class PhaseRequest:
    """What the plan asked for: the full evaluation, the sample length, which intervals the budget may fit."""

    eval_windows: int  # per split, when evaluating everything
    sample_length: int
    intervals: dict[str, int | None]  # None: the budget fits it
    window_steps: float = 0.0  # one evaluation window's forward pass, in training steps (until one is timed)


@dataclass(frozen=True)
class PhasePlan:
    """The evaluation size, sample length and how often each periodic work may run, and a notice when the budget
    is too small to learn in."""

    eval_windows: int  # per split
    sample_length: int
    runs: dict[str, int]  # per interval the budget fits: at most RUN_FRACTION runs over the run, 0 for none
    steps: int  # optimizer steps the plan expects to fit
    notice: str | None = None

    def interval(self, name: str, horizon: int) -> int:
        """A fitted interval in steps: a tenth of the horizon, or longer when fewer runs fit; 0: never."""
        runs = self.runs.get(name, RUN_FRACTION)
        if runs <= 0:
            return 0
        return max(1, horizon // RUN_FRACTION if runs >= RUN_FRACTION else math.ceil(horizon / runs))


def window_steps(block_size: int, tokens_per_step: int) -> float:
    """An evaluation window's first cost estimate in training steps: a forward pass over block_size tokens."""
    return EVAL_COST_PER_TOKEN * block_size / max(1, tokens_per_step)


def costs_from_step(step_seconds: float, request: PhaseRequest, checkpoint_seconds: float) -> PhaseCosts:
    """First estimates from a timed training step: forward passes cost a share of a step per token."""
    eval_window = request.window_steps * step_seconds
    return PhaseCosts(step=step_seconds, eval_window=eval_window,
                      sample_char=SAMPLE_COST_PER_TOKEN / EVAL_COST_PER_TOKEN * eval_window,
                      checkpoint=checkpoint_seconds)


def plan_phases(seconds_left: float, costs: PhaseCosts, request: PhaseRequest) -> PhasePlan:
    """Fit evaluations, samples and checkpoints to `seconds_left`; the final evaluation and checkpoint come first."""
    left = max(0.0, seconds_left)
    affordable = math.floor(FINAL_EVAL_SHARE * left / max(2 * costs.eval_window, 1e-12))
    windows = max(1, min(request.eval_windows, max(MIN_EVAL_WINDOWS, affordable)))
    final = 2 * windows * costs.eval_window + 2 * costs.checkpoint  # evaluation, then latest and best
    steps = max(0, math.floor((left - final) / max(costs.step, 1e-12)))
    sample_length = request.sample_length
    if request.intervals.get("sample_interval") is None:  # the budget's samples: as long as their share allows
        share = PERIODIC_SHARES["sample_interval"] * left / RUN_FRACTION
        sample_length = min(sample_length, math.floor(share / max(costs.sample_char, 1e-12)))
    # an evaluation's checkpoints count against the checkpoints' share, which they replace at evaluation steps
    cost = {"eval_interval": 2 * windows * costs.eval_window, "sample_interval": sample_length * costs.sample_char,
            "checkpoint_interval": costs.checkpoint}
    notice = None
    if steps < MIN_USEFUL_STEPS:
        notice = (f"only about {steps} more optimizer steps of {costs.step:.2f} s fit in the {left:.0f} s left: too "
                  f"few to learn much at this size; choose a smaller model or a longer budget")
    runs = {}
    for name, given in request.intervals.items():
        if given is not None:
            continue
        if steps < MIN_USEFUL_STEPS or (name == "sample_interval" and sample_length < MIN_SAMPLE_CHARS):
            runs[name] = 0  # no periodic work: every second goes to the few steps that fit
        else:
            runs[name] = affordable_runs(cost[name], PERIODIC_SHARES[name] * left)
    return PhasePlan(eval_windows=windows, sample_length=max(1, sample_length), runs=runs, steps=steps,
                     notice=notice)


def affordable_runs(cost: float, allowance: float) -> int:
    """How many times (at most RUN_FRACTION) work of `cost` seconds fits in `allowance` seconds."""
    return RUN_FRACTION if cost <= 0 else max(0, min(RUN_FRACTION, math.floor(allowance / cost)))
