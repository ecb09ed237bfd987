"""The budget benchmark's step clock: interleaved calibration on the real engine, and re-aiming max_steps."""

from __future__ import annotations

import time
from pathlib import Path

from bench.step_clock import TRIALS, BudgetWatch, Recorder, calibrate
from chargpt.core.config import ModelConfig
from trainer_service.training.api import CorpusRef, ProgressUpdate, TrainingPlan
from trainer_service.training.data import CorpusData

TEXT = "".join(f"{i % 7} little pigs went to market.\n" for i in range(100))


def make_plan(n_embd: int) -> TrainingPlan:
    model = ModelConfig(vocab_size=CorpusData(TEXT).tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2,
                        n_embd=n_embd)
    return TrainingPlan(job_id="j", model=model, max_steps=10**6, batch_size=4, learning_rate=1e-3, warmup_steps=0,
                        device="cpu", precision="fp32")


def progress(step: int, elapsed: float) -> ProgressUpdate:
    return ProgressUpdate(step=step, max_steps=100, loss=1.0, learning_rate=1e-3, tokens_per_second=1.0,
                          tokens_per_step=1, elapsed_seconds=elapsed, eta_seconds=0.0)


def watch_at(elapsed: float, events: list[ProgressUpdate], max_steps: int = 100) -> BudgetWatch:
    recorder = Recorder()
    recorder.events.extend(events)
    return BudgetWatch(budget=10.0, margin=1.0, max_steps=max_steps, recorder=recorder,
                       started=time.perf_counter() - elapsed)


def test_a_recheck_re_aims_max_steps_at_the_rate_achieved() -> None:
    # 0.05 s/step measured between 1.5 s and 3 s; 6.5 s left at 3.5 s: about 130 more steps, not 60.
    watch = watch_at(3.5, [progress(1, 0.2), progress(10, 1.5), progress(40, 3.0)])
    assert watch() is True and watch.pending == [0.6]
    new = watch.retarget(42)
    assert new is not None and 165 <= new <= 172 and watch.max_steps == new
    assert watch.retargets[0]["old_max_steps"] == 100 and watch.retargets[0]["measured_step_ms"] == 50.0
    assert watch.retarget(50) is None  # nothing pending: a later stop is the deadline's


def test_no_stop_when_the_schedule_already_fits_and_a_stop_at_the_deadline() -> None:
    on_time = watch_at(3.5, [progress(10, 1.5), progress(40, 3.0)], max_steps=171)
    assert on_time() is False and on_time.pending == [0.6]  # consumed, within tolerance: training goes on
    assert watch_at(10.5, [])() is True
    assert watch_at(10.5, []).retarget(80) is None


def test_calibration_interleaves_trials_of_every_plan(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    corpus = CorpusRef(corpus_id="c", name="pigs", sha256="", path=path)
    small, wide = calibrate([make_plan(16), make_plan(64)], corpus)
    assert len(small.trials) == len(wide.trials) == TRIALS
    assert all(t > 0 for t in small.trials + wide.trials) and small.spread >= 0
