"""Where a run ends and its learning rate per step: a fixed max_steps, or a wall-clock budget fitted as it goes.

With `plan.max_seconds` the engine times its first steps (calibration), then after every step re-estimates the
step horizon H: the steps that still fit in what is left of the budget once the final evaluation and checkpoints
and the intermediate evaluations, checkpoints and samples (per step, at their intervals) are paid for, capped by
max_steps. The schedule is learning_rate_at(step) with max_steps = H, so warmup and decay end at the deadline;
the run ends when the step count reaches H, which follows the estimate both ways (never below the step done; a
total that could only come down kept the first steps' estimate, ~1.4x a small model's later steps, and ended
runs at 66-70% of their budget); each estimate takes the fastest of the recent steps, since outside load only
adds time. Calibration ends
after CALIBRATION_STEPS timed steps, or sooner on a host so slow that they would eat the budget. At calibration
the evaluation's size, the sample length and how often each runs are fitted to the budget (training/budget.py),
and warmup and interval fields the request left unset are fitted once, to a tenth of H or less often where the
budget affords fewer runs (all kept in the resume state). The budget counts training time across runs
(`ResumeState.elapsed_seconds`, saved with `latest`): a resumed job continues against what was left when its
latest checkpoint was written, so steps lost to a kill are paid for again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from trainer_service.training.api import TrainingPlan
from trainer_service.training.budget import EVAL_COST_PER_TOKEN, PhasePlan, PhaseRequest, costs_from_step, plan_phases
from trainer_service.training.defaults import INTERVALS
from trainer_service.training.optim import learning_rate_at

CALIBRATION_STEPS = 3  # timed steps (after the first of each run, which pays for allocation/compilation)
CALIBRATION_SHARE = 0.25  # of the budget: on a slow host, stop timing steps where they would take more
FIRST_STEP_SHARE = 0.2  # ... and take the first step alone when it used this much
RECENT_STEPS = 16  # the step time estimate is the fastest of this many recent steps


class Schedule:
    """max_steps decides: a fixed horizon, the plan's warmup and intervals."""

    def __init__(self, plan: TrainingPlan) -> None:
        self.plan = plan
        self.horizon: int | None = plan.max_steps  # None: a budget without max_steps has no estimate yet
        self.fitted: dict[str, int] = {}

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        return learning_rate_at(self.plan, step, horizon=self.horizon, warmup_steps=self.interval("warmup_steps"))

    def interval(self, name: str) -> int:
        """The warmup or an interval in steps; 0 for an interval a budget has yet to fit (nothing periodic runs
        while it times its first steps, nor is its cost counted)."""
        value = self.fitted.get(name, getattr(self.plan, name))
        return 0 if value is None else int(value)

    def finished(self, step: int) -> bool:
        return self.horizon is not None and step >= self.horizon

    def after_step(self, step: int, step_seconds: float, spent: float) -> None:
        """Called after every optimizer step with its duration and the training time spent so far."""

    def paid(self, kind: str, seconds: float) -> None:
        """An evaluation, checkpoint or sample took this long (budgets learn their cost)."""

    def seconds_left(self, spent: float) -> float | None:
        return None

    @property
    def sample_length(self) -> int:
        return self.plan.sample_length


class TimeBudget(Schedule):
    """plan.max_seconds decides (or max_steps, if it comes first): the horizon is re-estimated every step."""

    def __init__(self, plan: TrainingPlan, fitted: dict[str, int], horizon: int | None, eval_steps: float,
                 checkpoint_seconds: float, agree: Callable[[int], int], request: PhaseRequest | None = None
                 ) -> None:
        super().__init__(plan)
        assert plan.max_seconds is not None
        self.budget = plan.max_seconds
        self.fitted = dict(fitted)
        self.horizon = self._capped(horizon) if horizon else plan.max_steps
        # what the phases cost before they are timed: one evaluation of everything is eval_steps steps
        self.request = request or PhaseRequest(eval_windows=1, sample_length=plan.sample_length,
                                               intervals={n: getattr(plan, n) for n in INTERVALS},
                                               window_steps=eval_steps / 2)
        self.costs: dict[str, float] = {"checkpoint": checkpoint_seconds}  # seconds, as measured
        self.agree = agree  # every rank must use the same horizon: rank 0's view under DDP
        self.step_seconds: float | None = None
        self.calibration: list[float] = []
        self.recent: deque[float] = deque(maxlen=RECENT_STEPS)
        self.phases: PhasePlan | None = None
        self.notice: str | None = None  # set once when the budget is too small for the model to learn

    @property
    def sample_length(self) -> int:
        return self.fitted.get("sample_length", self.plan.sample_length)

    @property
    def eval_windows(self) -> int | None:
        """Evaluation windows per split the budget affords; None: all (or not planned yet)."""
        return self.fitted.get("eval_windows")

    def learning_rate(self, step: int) -> float:
        """As for max_steps, to the current horizon; a fitted warmup shrinks with it (at most a tenth), so a
        horizon cut short by a slower machine still ends in decay rather than mid-warmup."""
        warmup = self.interval("warmup_steps")
        if "warmup_steps" in self.plan.fit_to_budget and self.horizon is not None:
            warmup = min(warmup, self.horizon // 10)
        return learning_rate_at(self.plan, step, horizon=self.horizon, warmup_steps=warmup)

    def after_step(self, step: int, step_seconds: float, spent: float) -> None:
        self._time_step(step_seconds)
        if self.step_seconds is None:  # still calibrating: only stop if the budget is already gone
            horizon = step if spent >= self.budget else self.horizon
            if horizon == step:
                self.notice = (f"the {self.budget:g} s budget ran out while timing the first {step} steps: too few "
                               f"to learn much at this size; choose a smaller model or a longer budget")
        else:
            if "eval_windows" not in self.fitted:
                self._plan_phases(spent)
            left = self.budget - spent - self._final_cost()
            horizon = self._capped(step + max(0, math.floor(left / self._seconds_per_step())))
        agreed = self.agree(-1 if horizon is None else horizon)  # -1 stands for "no estimate yet" on the wire
        self.horizon = None if agreed < 0 else max(step, agreed)
        unfitted = not all(n in self.fitted for n in self.plan.fit_to_budget)
        if self.step_seconds is not None and self.horizon is not None and unfitted:
            self._fit(self.horizon)

    def paid(self, kind: str, seconds: float) -> None:
        self.costs[kind] = seconds

    def _capped(self, horizon: int) -> int:
        """max_steps, when set, ends the run first."""
        return horizon if self.plan.max_steps is None else min(horizon, self.plan.max_steps)

    def seconds_left(self, spent: float) -> float | None:
        return max(0.0, self.budget - spent)

    def _time_step(self, seconds: float) -> None:
        if self.step_seconds is not None:
            # The fastest recent step: a burst of outside load must not cut the horizon; load that persists raises
            # the estimate once the window holds no faster step.
            self.recent.append(seconds)
            self.step_seconds = min(self.recent)
            return
        self.calibration.append(seconds)
        timed = self.calibration[1:]  # the first step of a run pays for allocation (and compilation)
        # a host so slow that timing the remaining steps would take a quarter of the budget stops early
        slow = sum(self.calibration) + (CALIBRATION_STEPS - len(timed)) * seconds > CALIBRATION_SHARE * self.budget
        if len(timed) >= CALIBRATION_STEPS or (slow and timed) or seconds >= FIRST_STEP_SHARE * self.budget:
            # the fastest timed step: outside load only ever adds time; the first step (allocation, lazy
            # initialisation: seconds even for a small model) only when the budget cannot afford another
            self.step_seconds = min(timed or self.calibration)
            self.recent.extend(timed or self.calibration)

    def _plan_phases(self, spent: float) -> None:
        """Size evaluations and samples, and how often they run, to what is left (fixed from then on)."""
        assert self.step_seconds is not None
        costs = costs_from_step(self.step_seconds, self.request, self.costs["checkpoint"])
        phases = plan_phases(self.budget - spent, costs, self.request)
        self.fitted["eval_windows"] = self.agree(phases.eval_windows)  # every rank evaluates the same windows
        self.fitted["sample_length"] = phases.sample_length
        self.phases, self.notice = phases, phases.notice

    def _cost(self, kind: str) -> float:
        if kind in self.costs or self.step_seconds is None:
            return self.costs.get(kind, 0.0)
        costs = costs_from_step(self.step_seconds, self.request, self.costs["checkpoint"])
        if kind == "evaluation":
            return 2 * (self.eval_windows or self.request.eval_windows) * costs.eval_window
        return self.sample_length * costs.sample_char if kind == "sample" else 0.0

    def _final_cost(self) -> float:
        """The closing evaluation and its checkpoints (latest, and best if it improved)."""
        return self._cost("evaluation") + 2 * self._cost("checkpoint")

    def _seconds_per_step(self) -> float:
        """A step's own time plus its share of the periodic evaluations, checkpoints and samples."""
        assert self.step_seconds is not None
        per_step = self.step_seconds
        evaluate, checkpoint = self.interval("eval_interval"), self.interval("checkpoint_interval")
        sample = self.interval("sample_interval")
        if evaluate:
            per_step += self._final_cost() / evaluate
        if checkpoint:
            per_step += self._cost("checkpoint") / checkpoint
        if sample:
            per_step += self._cost("sample") / sample
        return max(per_step, 1e-9)

    def _fit(self, horizon: int) -> None:
        """Unset warmup and intervals follow the horizon first estimated (fixed from then on): a tenth of it, or
        longer intervals where the budget affords fewer evaluations, samples or checkpoints."""
        tenth = max(1, horizon // 10)
        for name in self.plan.fit_to_budget:
            if name in self.fitted:
                continue
            if name == "warmup_steps":
                self.fitted[name] = min(self.plan.warmup_steps, tenth)
            elif name in INTERVALS:
                planned = self.phases.interval(name, horizon) if self.phases is not None else tenth
                self.fitted[name] = 0 if getattr(self.plan, name) == 0 else planned


def evaluation_steps(eval_tokens: int, tokens_per_step: int) -> float:
    """An evaluation's first cost estimate in training steps: forward passes over its tokens."""
    return EVAL_COST_PER_TOKEN * eval_tokens / max(1, tokens_per_step)


def checkpoint_seconds_guess(parameters: int) -> float:
    """A `latest` checkpoint's first cost estimate: weights plus two AdamW moments, fp32, at ~200 MB/s."""
    return 0.02 + 12 * parameters / 200e6
