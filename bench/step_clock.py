"""Step-time calibration for budget runs: interleaved short trials before training, re-estimates during it.

One long sample taken once is at the mercy of whatever else the host does in those seconds (a 40-step median
read 41.7 ms against a real ~33 ms and ended a 100 s run at 78 s). Here each recipe first runs warm-up steps
that are thrown away, then several short trials taken in turn with the other recipes of the run (so a burst
of outside load lands on all of them), and the step time is the median of the trials' means. During training
the rate actually achieved is re-measured at a few points of the budget and max_steps (and with it the
learning-rate decay) is re-aimed at the deadline.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer_service.training.api import CorpusRef, ProgressUpdate, TrainingEvent, TrainingPlan
from trainer_service.training.loop import Trainer
from trainer_service.training.runtime import resolve_runtime

WARMUP_STEPS = 8  # allocator, kernel selection and cache warm-up: the first steps run slow
TRIALS = 5
STEPS_PER_TRIAL = 6
RECHECK_AT = (0.3, 0.6)  # fractions of the budget where the achieved rate re-aims max_steps
RETARGET_TOLERANCE = 0.03  # re-aim only when the schedule would miss the deadline by more than this


class Recorder:
    def __init__(self) -> None:
        self.events: list[TrainingEvent] = []

    def emit(self, event: TrainingEvent) -> None:
        self.events.append(event)


@dataclass
class Calibration:
    """A recipe's measured step time: every trial's mean, and their median."""

    trials: list[float] = field(default_factory=list)

    @property
    def step_seconds(self) -> float:
        return statistics.median(self.trials)

    @property
    def spread(self) -> float:
        """(max - min) / median of the trials: how noisy the host was while measuring."""
        return (max(self.trials) - min(self.trials)) / self.step_seconds


def calibrate(plans: list[TrainingPlan], corpus: CorpusRef) -> list[Calibration]:
    """Step times of `plans` on the real engine, their trials interleaved, warm-up steps discarded."""
    with tempfile.TemporaryDirectory() as tmp:
        trainers = [Trainer(p, corpus, Path(tmp) / str(i), Recorder(), resolve_runtime(p))
                    for i, p in enumerate(plans)]
        for trainer in trainers:
            for step in range(WARMUP_STEPS):
                trainer._train_step(step)
        results = [Calibration() for _ in plans]
        for trial in range(TRIALS):
            for trainer, result in zip(trainers, results, strict=True):
                first = WARMUP_STEPS + trial * STEPS_PER_TRIAL
                t0 = time.perf_counter()
                for step in range(first, first + STEPS_PER_TRIAL):
                    trainer._train_step(step)
                result.trials.append((time.perf_counter() - t0) / STEPS_PER_TRIAL)
    return results


def steps_for(seconds: float, step_seconds: float, margin: float) -> int:
    return max(1, int(margin * seconds / step_seconds))


@dataclass
class BudgetWatch:
    """should_stop for a budget run: true at the deadline, and at a re-check point when max_steps is off.

    After a re-check stop, `retarget(step)` is the new max_steps to resume with (the engine resumes from
    `latest` exactly, so re-aiming costs one checkpoint write).
    """

    budget: float
    margin: float
    max_steps: int
    recorder: Recorder
    started: float = field(default_factory=time.perf_counter)
    pending: list[float] = field(default_factory=lambda: list(RECHECK_AT))
    step_seconds: float | None = None  # the achieved rate at the last re-check that asked to re-aim
    retargets: list[dict[str, float]] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self) -> bool:
        elapsed = self.elapsed()
        if elapsed >= self.budget:
            return True
        if not self.pending or elapsed < self.pending[0] * self.budget:
            return False
        self.pending.pop(0)
        # The rate over the later two thirds of the run so far: the first steps of a process run slow.
        recent = [e for e in self.recorder.events if isinstance(e, ProgressUpdate) and e.elapsed_seconds >= elapsed / 3]
        if len(recent) < 2 or recent[-1].step == recent[0].step:
            return False
        rate = (recent[-1].elapsed_seconds - recent[0].elapsed_seconds) / (recent[-1].step - recent[0].step)
        target = recent[-1].step + steps_for(self.budget - elapsed, rate, self.margin)
        if abs(target - self.max_steps) <= RETARGET_TOLERANCE * self.max_steps:
            return False
        self.step_seconds = rate
        return True

    def retarget(self, step: int) -> int | None:
        """The max_steps to resume with after a stop at `step`, or None when the stop was the deadline."""
        if self.step_seconds is None or self.elapsed() >= self.budget:
            return None
        new = step + steps_for(self.budget - self.elapsed(), self.step_seconds, self.margin)
        self.retargets.append({"at_step": step, "at_seconds": round(self.elapsed(), 2),
                               "measured_step_ms": round(self.step_seconds * 1000, 2), "old_max_steps": self.max_steps,
                               "new_max_steps": new})
        self.step_seconds, self.max_steps = None, new
        return new
