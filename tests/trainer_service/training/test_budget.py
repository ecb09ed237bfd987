"""Training to a wall-clock budget (TrainingSpec.max_seconds) on a tiny model: the deadline, the schedule, resume."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from engine_support import TEXT, Recorder, make_plan, never  # type: ignore[import-not-found]

from chargpt.core.checkpoint import load_checkpoint
from trainer_service.training.api import CorpusRef, EvaluationResult, ProgressUpdate, TrainingPlan
from trainer_service.training.loop import run_training
from trainer_service.training.optim import learning_rate_at
from trainer_service.training.schedule import CALIBRATION_STEPS, TimeBudget
from trainer_service.training.state import RESUME_FILE, ResumeState

BUDGET = 4.0
SLACK = 0.25  # the machine running the tests is shared: the deadline logic is asserted exactly below


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two intra-op threads on a shared, oversubscribed machine make step times erratic (seconds per step);
    these tests are about the deadline and the schedule, not throughput."""
    monkeypatch.setenv("CHARGPT_TRAIN_THREADS", "1")


@pytest.fixture
def corpus(tmp_path: Path) -> CorpusRef:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return CorpusRef(corpus_id="c1", name="pigs", sha256="ab" * 32, path=path)


def budget_plan(**update: object) -> TrainingPlan:
    """As the trainer resolves a request with only max_seconds: no step limit, intervals fitted to the budget."""
    values = make_plan().model_dump(exclude={"eval_interval", "sample_interval", "checkpoint_interval",
                                                 "fit_to_budget"})
    fit = ("warmup_steps", "eval_interval", "sample_interval", "checkpoint_interval")  # as plan.py sets it
    values.update({"max_steps": None, "max_seconds": BUDGET, "warmup_steps": 50, "fit_to_budget": fit,
                   **update})
    return TrainingPlan.model_validate(values)


def stop_after_seconds(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() > deadline


def fitted(job_dir: Path) -> ResumeState:
    latest = job_dir / "checkpoints" / "latest"
    return ResumeState.model_validate_json((latest / RESUME_FILE).read_text(encoding="utf-8"))


def test_a_budget_ends_at_its_deadline_with_the_learning_rate_at_its_minimum(tmp_path: Path,
                                                                             corpus: CorpusRef) -> None:
    plan, sink = budget_plan(), Recorder()
    started = time.perf_counter()
    outcome = run_training(plan, corpus, tmp_path / "job", sink, never)
    wall = time.perf_counter() - started
    progress = sink.of(ProgressUpdate)
    final = progress[-1]
    assert not outcome.stopped_early and final.step == outcome.final_step >= CALIBRATION_STEPS + 1
    per_step = final.elapsed_seconds / final.step  # on a loaded machine one late step may overshoot
    assert (1 - SLACK) * BUDGET <= final.elapsed_seconds <= (1 + SLACK) * BUDGET + 2 * per_step
    assert wall <= BUDGET * (1 + SLACK) + 3.0  # plus start-up (model, corpus), which the budget does not count
    state = fitted(tmp_path / "job")
    assert state.horizon == outcome.final_step and state.fitted["eval_interval"] == max(1, state.fitted[
        "eval_interval"])
    # The schedule ended where the run did: the final step's LR is the decay's last value, next to the minimum.
    assert state.fitted["warmup_steps"] == min(50, max(1, state.fitted["eval_interval"]))
    warmup = min(state.fitted["warmup_steps"], final.step // 10)
    expected = learning_rate_at(plan, final.step - 1, horizon=final.step, warmup_steps=warmup)
    assert final.learning_rate == pytest.approx(expected)
    assert final.learning_rate == min(p.learning_rate for p in progress if p.step > warmup)
    span = final.step - warmup  # the decay's last step: progress (span - 1) / span of the way to the minimum
    assert final.learning_rate - plan.min_learning_rate <= (0.5 * (1 + math.cos(math.pi * (span - 1) / span)) + 1e-9
                                                            ) * (plan.learning_rate - plan.min_learning_rate)
    assert [p.budget_seconds_left for p in progress] == sorted((p.budget_seconds_left for p in progress),
                                                               reverse=True)
    assert final.budget_seconds_left is not None and final.budget_seconds_left < SLACK * BUDGET
    evals = sink.of(EvaluationResult)
    assert evals[-1].step == outcome.final_step  # a final evaluation (and checkpoint) at the deadline
    assert load_checkpoint(tmp_path / "job" / "checkpoints" / "latest").manifest.training.step == final.step


def test_max_steps_wins_when_it_comes_first(tmp_path: Path, corpus: CorpusRef) -> None:
    plan, sink = budget_plan(max_steps=12, max_seconds=600.0, warmup_steps=1, fit_to_budget=()), Recorder()
    outcome = run_training(plan, corpus, tmp_path / "job", sink, never)
    final = sink.of(ProgressUpdate)[-1]
    assert outcome.final_step == 12 and final.max_steps == 12
    assert final.learning_rate == pytest.approx(learning_rate_at(plan, 11))


def test_a_killed_budget_job_resumes_against_what_is_left(tmp_path: Path, corpus: CorpusRef) -> None:
    plan = budget_plan()
    first, second = Recorder(), Recorder()
    stopped = run_training(plan, corpus, tmp_path / "job", first, stop_after_seconds(1.5))
    assert stopped.stopped_early
    spent = fitted(tmp_path / "job").elapsed_seconds
    resumed = run_training(plan, corpus, tmp_path / "job", second, never)
    progress = second.of(ProgressUpdate)
    assert progress[0].step == stopped.final_step + 1 and not resumed.stopped_early
    assert progress[0].budget_seconds_left is not None and progress[0].budget_seconds_left < BUDGET - spent + 0.01
    final = progress[-1]
    per_step = final.elapsed_seconds / final.step
    assert (1 - SLACK) * BUDGET <= final.elapsed_seconds <= (1 + SLACK) * BUDGET + 2 * per_step
    warmup = min(fitted(tmp_path / "job").fitted["warmup_steps"], final.step // 10)
    assert final.learning_rate == pytest.approx(learning_rate_at(plan, final.step - 1, horizon=final.step,
                                                                 warmup_steps=warmup))


def test_a_budget_without_max_steps_keeps_the_schedule_a_ten_million_step_limit_gave() -> None:
    """max_steps None (no step limit) replaced a 10,000,000-step stand-in: the horizon, the fitted warmup and
    intervals and the learning rate of every step are the same; only the progress events' max_steps differs
    while the budget times its first steps (None rather than the stand-in)."""
    unlimited = budget_plan(max_seconds=100.0, warmup_steps=5)
    assert unlimited.max_steps is None and unlimited.eval_interval is None
    stand_in = budget_plan(max_seconds=100.0, warmup_steps=5, max_steps=10_000_000, eval_interval=1_000_000,
                           sample_interval=1_000_000, checkpoint_interval=1_000_000)

    def run(plan: TrainingPlan) -> tuple[list[float], list[int | None], dict[str, int]]:
        budget = TimeBudget(plan, {}, None, eval_steps=0.0, checkpoint_seconds=0.0, agree=lambda h: h)
        rates, horizons = [], []
        for step in range(1, 1100):
            rates.append(budget.learning_rate(step - 1))
            budget.after_step(step, 0.1, spent=0.1 * step)
            horizons.append(budget.horizon)
            if budget.finished(step):
                break
        return rates, horizons, budget.fitted

    rates, horizons, fit = run(unlimited)
    old_rates, old_horizons, old_fit = run(stand_in)
    assert horizons[:CALIBRATION_STEPS] == [None] * CALIBRATION_STEPS
    assert old_horizons[:CALIBRATION_STEPS] == [10_000_000] * CALIBRATION_STEPS
    assert horizons[CALIBRATION_STEPS:] == old_horizons[CALIBRATION_STEPS:] and horizons[-1] == len(horizons)
    assert fit == old_fit and fit["eval_interval"] == horizons[CALIBRATION_STEPS] // 10
    assert rates == pytest.approx(old_rates, rel=1e-6) and rates[-1] == pytest.approx(
        learning_rate_at(unlimited, len(rates) - 1, horizon=len(rates), warmup_steps=fit["warmup_steps"]))
