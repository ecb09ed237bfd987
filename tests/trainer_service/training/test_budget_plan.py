"""Fitting a budget's evaluations, samples and checkpoints (training/budget.py), and its progress total."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_support import TEXT, Recorder, make_plan, never  # type: ignore[import-not-found]

from chargpt.core.checkpoint import load_checkpoint
from trainer_service.training.api import (
    CheckpointSaved,
    CorpusRef,
    EvaluationResult,
    Notice,
    ProgressUpdate,
    TrainingPlan,
)
from trainer_service.training.budget import (
    MIN_EVAL_WINDOWS,
    MIN_USEFUL_STEPS,
    RUN_FRACTION,
    PhaseCosts,
    PhaseRequest,
    costs_from_step,
    plan_phases,
)
from trainer_service.training.loop import run_training
from trainer_service.training.schedule import CALIBRATION_STEPS, TimeBudget

FITTED = {"eval_interval": None, "sample_interval": None, "checkpoint_interval": None}


def request(eval_windows: int = 500, sample_length: int = 200, **intervals: int | None) -> PhaseRequest:
    return PhaseRequest(eval_windows=eval_windows, sample_length=sample_length, intervals={**FITTED, **intervals},
                        window_steps=0.005)


def test_a_fast_host_keeps_the_full_evaluation_and_samples_every_tenth_of_the_run() -> None:
    costs = PhaseCosts(step=0.03, eval_window=0.0005, sample_char=0.001, checkpoint=0.05)
    plan = plan_phases(100.0, costs, request())
    assert plan.eval_windows == 500 and plan.sample_length == 200 and plan.notice is None
    assert plan.runs == dict.fromkeys(FITTED, RUN_FRACTION)
    assert plan.interval("eval_interval", 3000) == 300


def test_issue_25s_notebook_job_shrinks_evaluation_and_samples_and_says_too_few_steps_fit() -> None:
    """A notebook-size step of 46 s, an evaluation window of 0.75 s (131 s for all 174 of them), 0.45 s a sampled
    character, in 90 s: the whole evaluation alone would overrun the budget."""
    costs = PhaseCosts(step=46.0, eval_window=0.75, sample_char=0.45, checkpoint=0.3)
    plan = plan_phases(90.0, costs, request(eval_windows=174))
    assert plan.eval_windows == 3  # 4.5 s of evaluation (a twentieth of the budget), not 131 s
    assert plan.steps == 1 and plan.notice is not None and "smaller model" in plan.notice
    assert plan.runs == dict.fromkeys(FITTED, 0)  # no periodic work: the final evaluation and checkpoint only
    assert plan.interval("eval_interval", 1) == 0


def test_a_slow_host_evaluates_fewer_windows_less_often_and_samples_shorter_text() -> None:
    costs = costs_from_step(2.0, request(), checkpoint_seconds=0.5)  # a window: 0.01 s, a character: 0.02 s
    plan = plan_phases(600.0, costs, request(eval_windows=5000))
    assert MIN_EVAL_WINDOWS < plan.eval_windows < 5000
    assert 2 * plan.eval_windows * costs.eval_window <= 0.05 * 600  # the final evaluation: a twentieth
    assert plan.sample_length < 200 and plan.notice is None
    assert plan.steps >= MIN_USEFUL_STEPS
    spent = {name: plan.runs[name] * cost for name, cost in (
        ("eval_interval", 2 * plan.eval_windows * costs.eval_window),
        ("sample_interval", plan.sample_length * costs.sample_char), ("checkpoint_interval", costs.checkpoint))}
    assert sum(spent.values()) <= 0.3 * 600  # periodic work within its shares of the budget


def test_intervals_the_request_set_are_kept_and_only_the_fitted_ones_planned() -> None:
    costs = PhaseCosts(step=46.0, eval_window=0.75, sample_char=0.45, checkpoint=0.3)
    plan = plan_phases(90.0, costs, request(eval_windows=174, sample_length=50, eval_interval=2, sample_interval=3))
    assert set(plan.runs) == {"checkpoint_interval"} and plan.sample_length == 50  # its samples are as asked


def budget(plan: TrainingPlan) -> TimeBudget:
    return TimeBudget(plan, {}, None, eval_steps=0.0, checkpoint_seconds=0.0, agree=lambda h: h,
                      request=request(eval_windows=20, sample_length=plan.sample_length))


def budget_plan(**update: object) -> TrainingPlan:
    values = make_plan().model_dump(exclude={"eval_interval", "sample_interval", "checkpoint_interval"})
    values.update({"max_steps": None, "max_seconds": 100.0, "warmup_steps": 5,
                   "fit_to_budget": ("warmup_steps", *FITTED), **update})
    return TrainingPlan.model_validate(values)


def test_the_progress_total_follows_the_estimate_and_never_falls_below_the_steps_done() -> None:
    """Issue 25 saw `step 4/6` then `5/5`. The total is an estimate: it rises while steps run faster than the first
    ones (a total that could only come down ended runs at 66-70% of their budget), falls when they slow down, and is
    never under the step; the run ends on time."""
    schedule, spent, totals = budget(budget_plan()), 0.0, []
    for step in range(1, 100_000):
        seconds = 0.1 if step < 50 else 0.05 if step < 300 else 0.4  # faster for a while, then much slower
        spent += seconds
        schedule.after_step(step, seconds, spent)
        if schedule.horizon is not None:
            assert schedule.horizon >= step
            totals.append(schedule.horizon)
        if schedule.finished(step):
            break
    assert max(totals) > totals[0] and totals[-1] == step < max(totals)
    assert 100.0 - 0.4 <= spent <= 100.0 + 0.4


def test_slow_steps_are_timed_once_not_for_several_steps_past_the_budget() -> None:
    """On a slow host CALIBRATION_STEPS steps can outlast the budget: a first step that took a fifth of it is
    the estimate; one that took less (allocation, lazy initialisation) waits for a second step to time, and
    calibration ends there when timing the rest would take over a quarter of the budget."""
    schedule = budget(budget_plan(max_seconds=90.0))
    schedule.after_step(1, 46.0, spent=50.0)
    assert schedule.step_seconds == 46.0 and schedule.horizon == 1 and schedule.finished(1)
    assert schedule.notice is not None and len(schedule.calibration) < CALIBRATION_STEPS + 1
    waiting = budget(budget_plan(max_seconds=30.0))
    waiting.after_step(1, 3.8, spent=3.8)  # an eighth of the budget: the first step alone does not decide
    assert waiting.step_seconds is None and waiting.horizon is None
    waiting.after_step(2, 2.0, spent=5.8)  # timing two more such steps would take over a quarter of the budget
    assert waiting.step_seconds == 2.0 and waiting.horizon is not None and waiting.horizon > 2


@pytest.fixture
def corpus(tmp_path: Path) -> CorpusRef:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return CorpusRef(corpus_id="c1", name="pigs", sha256="ab" * 32, path=path)


def test_a_budget_too_small_for_the_model_says_so_and_still_ends_with_a_checkpoint(tmp_path: Path,
                                                                                    corpus: CorpusRef) -> None:
    sink = Recorder()
    outcome = run_training(budget_plan(max_seconds=0.05), corpus, tmp_path / "job", sink, never)
    notices = sink.of(Notice)
    assert len(notices) == 1 and "too few to learn" in notices[0].message
    assert not outcome.stopped_early and outcome.final_step >= 1
    assert sink.of(EvaluationResult)[-1].step == outcome.final_step
    assert {c.checkpoint_kind for c in sink.of(CheckpointSaved)} == {"latest", "best"}
    latest = load_checkpoint(tmp_path / "job" / "checkpoints" / "latest")
    assert latest.manifest.training.step == outcome.final_step
    progress = sink.of(ProgressUpdate)
    assert all(p.max_steps is None or p.max_steps >= p.step for p in progress)
