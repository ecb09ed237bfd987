"""A run's periodic work after each step (evaluations, checkpoints, samples) and what a time budget makes of it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from trainer_service.training.api import Notice, TrainingEvent, TrainingPlan
from trainer_service.training.budget import PhaseRequest, window_steps
from trainer_service.training.defaults import INTERVALS
from trainer_service.training.evaluate import Evaluator
from trainer_service.training.runtime import Runtime, from_rank0
from trainer_service.training.schedule import Schedule, TimeBudget, checkpoint_seconds_guess, evaluation_steps
from trainer_service.training.state import ResumeState


def build_schedule(plan: TrainingPlan, state: ResumeState, evaluator: Evaluator, block: int,
                   runtime: Runtime) -> Schedule:
    """The plan's fixed max_steps, or a time budget (resumed from `state`) priced by the evaluation and model size."""
    if plan.max_seconds is None:
        return Schedule(plan)
    tokens = plan.batch_size * block
    request = PhaseRequest(eval_windows=evaluator.windows, sample_length=plan.sample_length,
                           intervals={name: getattr(plan, name) for name in INTERVALS},
                           window_steps=window_steps(block, tokens))
    return TimeBudget(plan, state.fitted, state.horizon, evaluation_steps(evaluator.tokens, tokens),
                      checkpoint_seconds_guess(plan.model.parameter_count()),
                      lambda value: from_rank0(value, runtime), request)


@dataclass(frozen=True)
class PeriodicWork:
    """The trainer's periodic work, each run on every rank (rank 0 alone reports and writes)."""

    evaluate: Callable[[], None]
    save_latest: Callable[[], None]
    sample: Callable[[], None]


class Phases:
    """Runs the periodic work due after a step, tells the schedule what each cost, and applies what a time budget
    decided from its timings (the evaluation's size, a notice)."""

    def __init__(self, schedule: Schedule, evaluator: Evaluator, work: PeriodicWork,
                 emit: Callable[[TrainingEvent], None]) -> None:
        self.schedule, self.evaluator, self.work, self.emit = schedule, evaluator, work, emit

    def timed_step(self, step: int, step_seconds: float, spent: float) -> None:
        """A budgeted step took `step_seconds`, `spent` seconds of training so far: the budget refits."""
        self.schedule.after_step(step, step_seconds, spent)
        self.apply_budget(step)

    def apply_budget(self, step: int) -> None:
        """What a time budget decided once it timed its first steps: the evaluation's size, and a notice."""
        if not isinstance(self.schedule, TimeBudget):
            return
        if self.schedule.eval_windows is not None:
            self.evaluator.limit(self.schedule.eval_windows)
        if self.schedule.notice is not None:
            self.emit(Notice(step=step, message=self.schedule.notice))
            self.schedule.notice = None

    def after_step(self, step: int) -> None:
        """The evaluation (with its checkpoint), checkpoint and sample due after `step`; all of them after the last."""
        every = self.schedule.interval
        final = self.schedule.finished(step)
        if final or (every("eval_interval") and step % every("eval_interval") == 0):
            self._paid("evaluation", self.work.evaluate)
            self._paid("checkpoint", self.work.save_latest)
        elif every("checkpoint_interval") and step % every("checkpoint_interval") == 0:
            self._paid("checkpoint", self.work.save_latest)
        if every("sample_interval") and (step % every("sample_interval") == 0 or final):
            self._paid("sample", self.work.sample)

    def _paid(self, kind: str, work: Callable[[], None]) -> None:
        """Do `work`, telling a time budget what it cost."""
        started = time.perf_counter()
        work()
        self.schedule.paid(kind, time.perf_counter() - started)
