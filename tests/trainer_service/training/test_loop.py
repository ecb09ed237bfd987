"""run_training end to end on a tiny model: learning, events, checkpoints, exact resume, stopping, bad plans."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from engine_support import TEXT, Recorder, make_plan, never  # type: ignore[import-not-found]
from safetensors.torch import load_file

from chargpt.core.checkpoint import load_checkpoint
from chargpt.errors import InvalidArgumentError
from trainer_service.training.api import (
    CheckpointSaved,
    CorpusRef,
    EvaluationResult,
    ProgressUpdate,
    TextSample,
    TrainingPlan,
)
from trainer_service.training.data import CorpusData
from trainer_service.training.loop import Trainer, run_training
from trainer_service.training.runtime import resolve_runtime
from trainer_service.training.state import OPTIMIZER_FILE, RESUME_FILE


@pytest.fixture
def corpus(tmp_path: Path) -> CorpusRef:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return CorpusRef(corpus_id="c1", name="pigs", sha256="ab" * 32, path=path)


def stop_after(steps: int) -> Callable[[], bool]:
    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        return calls[0] > steps  # called once before each step
    return should_stop


def test_training_learns_and_reports_in_order(tmp_path: Path, corpus: CorpusRef) -> None:
    sink = Recorder()
    outcome = run_training(make_plan(), corpus, tmp_path / "job", sink, never)
    assert outcome.final_step == 40 and not outcome.stopped_early
    evals = sink.of(EvaluationResult)
    assert [e.step for e in evals] == [20, 40]
    assert evals[-1].val_loss < 2.5 < 3.0 < _initial_loss(sink)  # from ~ln(vocab) to well below
    assert outcome.best_val_loss == min(e.val_loss for e in evals)
    steps = [e.step for e in sink.events]
    assert steps == sorted(steps)
    assert isinstance(sink.events[0], TextSample) and sink.events[0].step == 0
    assert [s.step for s in sink.of(TextSample)] == [0, 20, 40]
    assert all(len(s.text) == 24 for s in sink.of(TextSample))
    progress = sink.of(ProgressUpdate)
    assert progress[0].step == 1 and progress[-1].step == 40 and progress[-1].eta_seconds == 0
    assert all(p.max_steps == 40 and p.tokens_per_second > 0 and p.learning_rate > 0 for p in progress)
    assert all(p.tokens_per_step == 8 * 32 for p in progress)  # batch x block, for the metrics
    for i, event in enumerate(sink.events):  # each evaluation is followed by best (if better), then latest
        if isinstance(event, EvaluationResult):
            following = [e.checkpoint_kind for e in sink.events[i + 1:i + 3] if isinstance(e, CheckpointSaved)]
            assert following == (["best", "latest"] if event.is_best else ["latest"])


def _initial_loss(sink: Recorder) -> float:
    return float(sink.of(ProgressUpdate)[0].loss)


def test_checkpoints_are_loadable_with_training_metadata(tmp_path: Path, corpus: CorpusRef) -> None:
    sink = Recorder()
    run_training(make_plan(), corpus, tmp_path / "job", sink, never)
    latest = load_checkpoint(tmp_path / "job" / "checkpoints" / "latest")
    best = load_checkpoint(tmp_path / "job" / "checkpoints" / "best")
    info = latest.manifest.training
    assert (info.job_id, info.corpus_id, info.corpus_name, info.corpus_sha256, info.step) == (
        "job-1", "c1", "pigs", "ab" * 32, 40)
    best_eval = min(sink.of(EvaluationResult), key=lambda e: e.val_loss)
    assert best.manifest.training.val_loss == best_eval.val_loss and best.manifest.training.step == best_eval.step
    assert (latest.path / RESUME_FILE).is_file() and (latest.path / OPTIMIZER_FILE).is_file()
    saved = sink.of(CheckpointSaved)[-1]
    assert saved.checkpoint_kind == "latest" and saved.weights_sha256 == latest.manifest.weights.sha256
    assert saved.size_bytes == sum(f.stat().st_size for f in latest.path.iterdir())
    assert latest.tokenizer.vocabulary == CorpusData(TEXT).tokenizer.vocabulary


def test_resume_continues_exactly(tmp_path: Path, corpus: CorpusRef) -> None:
    plan = make_plan(sample_interval=0, checkpoint_interval=7)
    straight = Recorder()
    run_training(plan, corpus, tmp_path / "a", straight, never)
    first, second = Recorder(), Recorder()
    stopped = run_training(plan, corpus, tmp_path / "b", first, stop_after(13))
    assert stopped.stopped_early and stopped.final_step == 13
    resumed = run_training(plan, corpus, tmp_path / "b", second, never)
    assert resumed.final_step == 40 and not resumed.stopped_early
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest").model.state_dict()
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on CPU
    evals_a = straight.of(EvaluationResult)
    evals_b = first.of(EvaluationResult) + second.of(EvaluationResult)
    assert [e.step for e in evals_b] == [e.step for e in evals_a] == [20, 40]
    assert [e.val_loss for e in evals_b] == pytest.approx([e.val_loss for e in evals_a], abs=1e-6)
    assert second.of(ProgressUpdate)[-1].loss == pytest.approx(straight.of(ProgressUpdate)[-1].loss, abs=1e-6)
    assert second.of(ProgressUpdate)[0].step == 14


def test_muon_learns_and_resumes_exactly(tmp_path: Path, corpus: CorpusRef) -> None:
    plan = make_plan(sample_interval=0, checkpoint_interval=7, optimizer="muon")
    straight = Recorder()
    run_training(plan, corpus, tmp_path / "a", straight, never)
    evals = straight.of(EvaluationResult)
    assert evals[-1].val_loss < 2.5 < 3.0 < _initial_loss(straight)
    stopped = run_training(plan, corpus, tmp_path / "b", Recorder(), stop_after(13))
    assert stopped.final_step == 13
    tensors = load_file(str(tmp_path / "b" / "checkpoints" / "latest" / OPTIMIZER_FILE))
    assert any(k.endswith(".momentum_buffer") for k in tensors) and any(k.endswith(".exp_avg") for k in tensors)
    second = Recorder()
    run_training(plan, corpus, tmp_path / "b", second, never)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest").model.state_dict()
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # Muon momentum and AdamW moments both restored
    assert second.of(EvaluationResult)[-1].val_loss == pytest.approx(evals[-1].val_loss, abs=1e-6)


def test_should_stop_writes_latest_and_returns_early(tmp_path: Path, corpus: CorpusRef) -> None:
    sink = Recorder()
    outcome = run_training(make_plan(sample_interval=0), corpus, tmp_path / "job", sink, stop_after(3))
    assert outcome.stopped_early and outcome.final_step == 3
    assert load_checkpoint(tmp_path / "job" / "checkpoints" / "latest").manifest.training.step == 3
    assert [(e.checkpoint_kind, e.step) for e in sink.of(CheckpointSaved)] == [("latest", 3)]
    assert not sink.of(EvaluationResult)


def test_a_finished_job_resumes_to_nothing(tmp_path: Path, corpus: CorpusRef) -> None:
    plan = make_plan(max_steps=5, eval_interval=0, sample_interval=0)
    run_training(plan, corpus, tmp_path / "job", Recorder(), never)
    again = Recorder()
    outcome = run_training(plan, corpus, tmp_path / "job", again, never)
    assert outcome.final_step == 5 and not again.events and outcome.best_val_loss is not None


def test_grad_accumulation_gives_the_gradient_of_the_whole_batch(tmp_path: Path, corpus: CorpusRef) -> None:
    plan = make_plan(model=make_plan().model.model_copy(update={"dropout": 0.0}))
    (loss_one, one), (loss_three, three) = (
        _first_step_gradient(plan.model_copy(update={"grad_accumulation_steps": n}), corpus, tmp_path / str(n))
        for n in (1, 3))
    assert loss_three == pytest.approx(loss_one, abs=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(one, three, strict=True))


def test_cpu_micro_batches_give_the_gradient_of_the_whole_batch(tmp_path: Path, corpus: CorpusRef,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    plan = make_plan(model=make_plan().model.model_copy(update={"dropout": 0.0}))
    monkeypatch.setenv("CHARGPT_TRAIN_MICRO_TOKENS", "0")
    loss_whole, whole = _first_step_gradient(plan, corpus, tmp_path / "whole")
    monkeypatch.setenv("CHARGPT_TRAIN_MICRO_TOKENS", str(2 * plan.model.block_size))
    trainer = Trainer(plan, corpus, tmp_path / "probe", Recorder(), resolve_runtime(plan))
    assert trainer.micro_sizes == [2, 2, 2, 2]
    loss_split, split = _first_step_gradient(plan, corpus, tmp_path / "split")
    assert loss_split == pytest.approx(loss_whole, abs=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(whole, split, strict=True))


def test_cpu_training_uses_fast_dropout_unless_compiled(tmp_path: Path, corpus: CorpusRef) -> None:
    trainer = Trainer(make_plan(), corpus, tmp_path / "a", Recorder(), resolve_runtime(make_plan()))
    assert trainer.model.drop.fast and trainer.model.blocks[0].attn.fast_dropout
    compiled = make_plan(compile="on")
    assert not resolve_runtime(compiled).fast_dropout


def _first_step_gradient(plan: TrainingPlan, corpus: CorpusRef, job_dir: Path) -> tuple[float, list[torch.Tensor]]:
    trainer = Trainer(plan, corpus, job_dir, Recorder(), resolve_runtime(plan))
    seen: list[torch.Tensor] = []

    def record_instead_of_stepping(*args: object, **kwargs: object) -> None:
        seen.extend(p.grad.clone() for p in trainer.model.parameters() if p.grad is not None)
    trainer.optimizer.step = record_instead_of_stepping  # type: ignore[method-assign,assignment]
    loss = float(trainer._train_step(0))
    return loss, seen


def test_bf16_autocast_trains_on_cpu(tmp_path: Path, corpus: CorpusRef) -> None:
    sink = Recorder()
    run_training(make_plan(max_steps=3, precision="bf16", eval_interval=0, sample_interval=0), corpus,
                 tmp_path / "job", sink, never)
    assert all(torch.isfinite(torch.tensor(p.loss)) for p in sink.of(ProgressUpdate))


def test_bad_plans_are_rejected_naming_the_field(tmp_path: Path, corpus: CorpusRef) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        run_training(make_plan(precision="fp16"), corpus, tmp_path / "a", Recorder(), never)
    assert info.value.field == "training.precision"
    wrong_vocab = make_plan().model.model_copy(update={"vocab_size": 99})
    with pytest.raises(InvalidArgumentError) as info:
        run_training(make_plan(model=wrong_vocab), corpus, tmp_path / "b", Recorder(), never)
    assert info.value.field == "model.vocab_size"
    with pytest.raises(InvalidArgumentError) as info:
        run_training(make_plan(batch_size=2, grad_accumulation_steps=4), corpus, tmp_path / "c", Recorder(), never)
    assert info.value.field == "training.batch_size"
    assert not (tmp_path / "a").exists()
