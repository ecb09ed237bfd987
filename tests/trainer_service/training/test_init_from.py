"""Fine-tuning on a tiny model: rows mapped by character, a better start than from scratch, exact resume, and a
parent checkpoint that disappears or changes after the job was created."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from engine_support import TEXT, Recorder, make_plan, never  # type: ignore[import-not-found]

from chargpt.core.checkpoint import Lineage, load_checkpoint, read_manifest
from chargpt.core.tokenizer import CharTokenizer
from chargpt.errors import FailedPreconditionError
from trainer_service.training.api import CorpusRef, EvaluationResult, InitSource, TrainingPlan
from trainer_service.training.data import CorpusData
from trainer_service.training.loop import Trainer, run_training
from trainer_service.training.parent_weights import embedding_by_character
from trainer_service.training.runtime import resolve_runtime

# Related text: the same pigs, with characters the parent never saw ('!', 'Z', 'q') and without some it had.
RELATED = "".join(f"Z{i % 7} little pigs went to town and {i % 5} came home! quite so.\n" for i in range(150))


def corpus_at(tmp_path: Path, text: str, name: str) -> CorpusRef:
    path = tmp_path / f"{name}.txt"
    path.write_text(text, encoding="utf-8")
    return CorpusRef(corpus_id=name, name=name, sha256="cd" * 32, path=path)


@pytest.fixture(scope="module")
def parent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("parent")
    run_training(make_plan(sample_interval=0), corpus_at(tmp, TEXT, "pigs"), tmp / "job", Recorder(), never)
    return tmp / "job" / "checkpoints" / "best"


def finetune_plan(parent: Path, **update: object) -> TrainingPlan:
    manifest = read_manifest(parent)
    vocab = CorpusData(RELATED, manifest.vocabulary).tokenizer.vocab_size
    lineage = Lineage(job_id="job-1", kind="best", weights_sha256=manifest.weights.sha256, corpus_id="pigs",
                      step=manifest.training.step)
    source = InitSource(path=parent, vocabulary=manifest.vocabulary, lineage=lineage)
    plan = make_plan(job_id="job-2", model=manifest.model.model_copy(update={"vocab_size": vocab}), init_from=source,
                     sample_interval=0, learning_rate=1e-3, min_learning_rate=1e-4)
    return plan.model_copy(update=update)


def trainer(plan: TrainingPlan, corpus: CorpusRef, job_dir: Path) -> Trainer:
    return Trainer(plan, corpus, job_dir, Recorder(), resolve_runtime(plan))


def test_rows_move_by_character_and_new_characters_start_at_the_mean() -> None:
    rows = torch.arange(12, dtype=torch.float32).reshape(3, 4)  # parent vocabulary "abc"
    out = embedding_by_character(rows, CharTokenizer("Zabd"), CharTokenizer("abc"))
    assert torch.equal(out[1], rows[0]) and torch.equal(out[2], rows[1])  # 'a', 'b': shifted by the new 'Z'
    assert torch.equal(out[0], rows.mean(0)) and torch.equal(out[3], rows.mean(0))  # 'Z', 'd': new


def test_a_finetune_starts_from_the_parent_by_character(tmp_path: Path, parent_dir: Path) -> None:
    corpus = corpus_at(tmp_path, RELATED, "related")
    plan = finetune_plan(parent_dir)
    child = trainer(plan, corpus, tmp_path / "child")
    parent = load_checkpoint(parent_dir)
    old, new = parent.tokenizer.vocabulary, child.data.tokenizer.vocabulary
    assert set(old) < set(new) and {"!", "Z", "q"} <= set(new) - set(old)  # union: old characters kept
    assert set(old) - set(RELATED)  # ... including some the new corpus lacks
    wte, parent_wte = child.model.wte.weight.detach(), parent.model.wte.weight.detach()
    for char in old:
        assert torch.equal(wte[new.index(char)], parent_wte[old.index(char)])
    for char in set(new) - set(old):
        assert torch.equal(wte[new.index(char)], parent_wte.mean(0))
    assert child.model.lm_head.weight is child.model.wte.weight  # the tied head follows
    parent_state = parent.model.state_dict()
    for name, tensor in child.model.state_dict().items():
        if name not in ("wte.weight", "lm_head.weight"):
            assert torch.equal(tensor, parent_state[name]), name
    assert child.state.step == 0


def test_step_zero_validation_loss_beats_from_scratch(tmp_path: Path, parent_dir: Path) -> None:
    corpus = corpus_at(tmp_path, RELATED, "related")
    plan = finetune_plan(parent_dir)
    finetuned = trainer(plan, corpus, tmp_path / "a")
    own = plan.model.model_copy(update={"vocab_size": CorpusData(RELATED).tokenizer.vocab_size})
    scratch = trainer(plan.model_copy(update={"init_from": None, "model": own}), corpus, tmp_path / "b")
    _, val_finetuned = finetuned.evaluator.losses(finetuned.model)
    _, val_scratch = scratch.evaluator.losses(scratch.model)
    assert val_finetuned < val_scratch - 0.5, (val_finetuned, val_scratch)  # measured: 2.58 vs 3.39


def stop_after(steps: int) -> Callable[[], bool]:
    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        return calls[0] > steps
    return should_stop


def test_a_killed_finetune_resumes_exactly(tmp_path: Path, parent_dir: Path) -> None:
    corpus = corpus_at(tmp_path, RELATED, "related")
    plan = finetune_plan(parent_dir, max_steps=20, eval_interval=10, checkpoint_interval=7)
    straight = Recorder()
    run_training(plan, corpus, tmp_path / "a", straight, never)
    stopped = run_training(plan, corpus, tmp_path / "b", Recorder(), stop_after(9))
    assert stopped.stopped_early and stopped.final_step == 9
    second = Recorder()
    assert run_training(plan, corpus, tmp_path / "b", second, never).final_step == 20
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest")
    assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())
    assert second.of(EvaluationResult)[-1].val_loss == pytest.approx(straight.of(EvaluationResult)[-1].val_loss)
    assert b.manifest.training.parent == plan.init_from.lineage  # type: ignore[union-attr]  # lineage recorded


def test_a_parent_deleted_or_changed_after_create_fails_clearly(tmp_path: Path, parent_dir: Path) -> None:
    corpus = corpus_at(tmp_path, RELATED, "related")
    copy = tmp_path / "parent-copy"
    shutil.copytree(parent_dir, copy)
    plan = finetune_plan(copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(FailedPreconditionError, match="init_from: the parent checkpoint is damaged"):
        trainer(plan, corpus, tmp_path / "tampered")
    shutil.copytree(parent_dir, copy, dirs_exist_ok=True)  # whole again, but now a different (retrained) parent
    other = plan.init_from.lineage.model_copy(update={"weights_sha256": "0" * 64})  # type: ignore[union-attr]
    changed = plan.model_copy(update={"init_from": plan.init_from.model_copy(update={"lineage": other})})  # type: ignore[union-attr]
    with pytest.raises(FailedPreconditionError, match="changed after the job was created"):
        trainer(changed, corpus, tmp_path / "changed")
    shutil.rmtree(copy)
    with pytest.raises(FailedPreconditionError, match="init_from: the parent checkpoint is gone"):
        trainer(plan, corpus, tmp_path / "deleted")
