"""Fine-tuning against training from scratch on a small new text, for the same wall-clock budget.

    python -m bench.finetune --new-text FILE [--parent CHECKPOINT_DIR] [--budget 60] [--parent-budget 120]

Without --parent, a parent is first trained on tiny Shakespeare (the CPU size profile, --parent-budget seconds).
Both runs use the engine's time budget (TrainingPlan.max_seconds); the fine-tune gets the trainer's fine-tuning
defaults (a third of the learning rate, short warmup). Prints step-0 and final validation loss of each.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.train_common import DEFAULT_CORPUS, print_table
from bench.train_quality import Recorder
from chargpt.core.checkpoint import Lineage, read_manifest
from chargpt.core.config import ModelConfig
from chargpt.core.device import SIZE_PROFILES
from trainer_service.training.api import BEST, CorpusRef, EvaluationResult, InitSource, TrainingPlan
from trainer_service.training.data import CorpusData
from trainer_service.training.defaults import FINETUNE_LR_SCALE
from trainer_service.training.loop import run_training


def plan_for(name: str, vocab: int, budget: float, init_from: InitSource | None, model: ModelConfig | None
             ) -> TrainingPlan:
    p = SIZE_PROFILES["cpu"]
    model = model or ModelConfig(vocab_size=vocab, n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd,
                                 block_size=p.block_size, dropout=p.dropout)
    lr = p.learning_rate * (FINETUNE_LR_SCALE if init_from else 1)
    return TrainingPlan.model_validate(dict(
        job_id=name, model=model.model_copy(update={"vocab_size": vocab}), max_steps=None, max_seconds=budget,
        batch_size=p.batch_size, learning_rate=lr, warmup_steps=min(p.warmup_steps, 20 if init_from else 10**6),
        sample_interval=0, checkpoint_interval=0, eval_interval=10**6, device="cpu", init_from=init_from))


def train(plan: TrainingPlan, corpus: CorpusRef, job_dir: Path) -> tuple[float, float, int]:
    """(step-0 validation loss, final validation loss, steps) of a budgeted run."""
    from trainer_service.training.loop import Trainer
    from trainer_service.training.runtime import resolve_runtime

    probe = Trainer(plan, corpus, job_dir / "probe", Recorder(), resolve_runtime(plan))
    _, start = probe.evaluator.losses(probe.model)
    recorder = Recorder()
    outcome = run_training(plan, corpus, job_dir / "run", recorder, lambda: False)
    final = [e for e in recorder.events if isinstance(e, EvaluationResult)][-1]
    return start, final.val_loss, outcome.final_step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-text", type=Path, required=True, help="the small new text (e.g. ~50 KB)")
    parser.add_argument("--parent", type=Path, help="a checkpoint directory; default: train one on Shakespeare")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds for each of the two runs")
    parser.add_argument("--parent-budget", type=float, default=120.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        parent = args.parent
        if parent is None:
            shakespeare = CorpusRef(corpus_id="shakespeare", name="shakespeare", sha256="", path=DEFAULT_CORPUS)
            vocab = CorpusData.from_file(DEFAULT_CORPUS).tokenizer.vocab_size
            run_training(plan_for("parent", vocab, args.parent_budget, None, None), shakespeare, tmp / "parent",
                         Recorder(), lambda: False)
            parent = tmp / "parent" / "checkpoints" / BEST
        manifest = read_manifest(parent)
        new = CorpusRef(corpus_id="new", name=args.new_text.name, sha256="", path=args.new_text)
        source = InitSource(path=parent, vocabulary=manifest.vocabulary,
                            lineage=Lineage(weights_sha256=manifest.weights.sha256))
        union = CorpusData.from_file(args.new_text, manifest.vocabulary).tokenizer.vocab_size
        own = CorpusData.from_file(args.new_text).tokenizer.vocab_size
        rows = [["fine-tune", *train(plan_for("finetune", union, args.budget, source, manifest.model), new,
                                     tmp / "finetune")],
                ["from scratch", *train(plan_for("scratch", own, args.budget, None, manifest.model), new,
                                        tmp / "scratch")]]
    print_table(["run", "step-0 val loss", "final val loss", "steps"], rows)


if __name__ == "__main__":
    main()
