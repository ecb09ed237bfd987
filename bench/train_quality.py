"""Training quality: validation loss the CPU default reaches in a wall-clock budget, against two references.

    python -m bench.train_quality [--budget 100] [--corpus PATH] [--no-reference] [--optimizer adamw|muon]
    python -m bench.train_quality --config small --steps 5000 --device cuda     # the notebook run on a GPU

Budget mode (the default, on CPU): every recipe's plan carries max_seconds = the budget, so the engine itself
times its first steps, fits the learning-rate schedule so that its decay ends at the deadline, re-estimates as
it goes, and stops there (trainer_service/training/schedule.py) - the same code a `--max-seconds` job runs. Two
references train for the same budget, in plain fp32 with AdamW: nanoGPT's README CPU recipe for this corpus
(4 layers x 128, block 64, batch 12, lr 1e-3 cosine over 2000 steps, cut at the budget), and a tuned nanoGPT
recipe (3 layers x 128, 4 heads, block 96, batch 32, lr 4e-3, cosine to lr/10 fitted to the budget like the
preset). All are scored the same way: mean cross-entropy over the whole validation split in block_size windows,
fp32. The target: the preset at least TARGET_MARGIN nats below the tuned recipe, in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.host import host_peak, skip_reason
from bench.train_common import DEFAULT_CORPUS, machine_facts, print_table, write_result
from chargpt.core.checkpoint import load_checkpoint
from chargpt.core.config import ModelConfig
from chargpt.core.device import SIZE_PROFILES
from chargpt.core.measurements import train_gflop
from trainer_service.training.api import LATEST, CorpusRef, ProgressUpdate, TrainingEvent, TrainingPlan
from trainer_service.training.data import CorpusData
from trainer_service.training.evaluate import Evaluator
from trainer_service.training.loop import run_training
from trainer_service.training.runtime import resolve_runtime

TARGET_MARGIN = 0.15  # nats the CPU default should be below the tuned nanoGPT recipe (issue 13)
TUNED = "tuned nanoGPT recipe"


class Recorder:
    def __init__(self) -> None:
        self.events: list[TrainingEvent] = []

    def emit(self, event: TrainingEvent) -> None:
        self.events.append(event)


def make_plan(name: str, vocab: int, args: argparse.Namespace, max_steps: int | None,
              max_seconds: float | None = None) -> TrainingPlan:
    p = SIZE_PROFILES[name]
    override = {k: getattr(args, k) for k in PROFILE_FLAGS if getattr(args, k, None) is not None}
    plan_flags = {k: getattr(args, k) for k in PLAN_FLAGS if getattr(args, k, None) is not None}
    p = p.model_copy(update=override)
    model = ModelConfig(vocab_size=vocab, n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd,
                        block_size=p.block_size, dropout=p.dropout)
    return TrainingPlan(job_id=f"quality-{name}", model=model, max_steps=max_steps, batch_size=p.batch_size,
                        learning_rate=p.learning_rate,
                        min_learning_rate=p.learning_rate * (p.min_lr_ratio if args.min_lr_ratio is None
                                                             else args.min_lr_ratio),
                        warmup_steps=p.warmup_steps if max_steps is None else min(p.warmup_steps, max_steps),
                        weight_decay=0.1, grad_clip=1.0,
                        eval_interval=args.eval_interval, sample_interval=0, sample_length=200, seed=args.seed,
                        checkpoint_interval=0, device=args.device, compile=args.compile, max_seconds=max_seconds,
                        **{"optimizer": p.optimizer, **plan_flags})


def reference_plan(vocab: int, args: argparse.Namespace) -> TrainingPlan:
    """nanoGPT's README recipe for training this corpus on a CPU."""
    model = ModelConfig(vocab_size=vocab, n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)
    return TrainingPlan(job_id="quality-reference", model=model, max_steps=2000, batch_size=12,
                        learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100, weight_decay=0.1,
                        grad_clip=1.0, eval_interval=0, sample_interval=0, sample_length=200, seed=args.seed,
                        checkpoint_interval=0, device=args.device, compile="off", precision="fp32",
                        max_seconds=args.budget)


def tuned_plan(vocab: int, args: argparse.Namespace) -> TrainingPlan:
    """A well-tuned plain recipe for a 100 s CPU budget (issue 13): nanoGPT's model and AdamW, in fp32."""
    model = ModelConfig(vocab_size=vocab, n_layer=3, n_head=4, n_embd=128, block_size=96, dropout=0.0)
    return TrainingPlan(job_id="quality-tuned", model=model, max_steps=None, batch_size=32,
                        learning_rate=4e-3, min_learning_rate=4e-4, warmup_steps=50, weight_decay=0.1,
                        grad_clip=1.0, eval_interval=0, sample_interval=0, sample_length=200, seed=args.seed,
                        checkpoint_interval=0, device=args.device, compile="off", precision="fp32",
                        max_seconds=args.budget)


def train(label: str, plan: TrainingPlan, corpus: CorpusRef, data: CorpusData, device: torch.device
          ) -> dict[str, Any]:
    """Train (until max_steps or plan.max_seconds), then score the final weights on the whole validation split;
    a recipe the host's GEMM peaks make hopeless (bf16 emulated) is a row saying why instead."""
    m, precision = plan.model, precision_name(plan)
    reason = skip_reason(precision, train_gflop(m, plan.batch_size))
    if reason is not None:
        return {"recipe": label, "model": f"{m.n_layer}x{m.n_embd} h{m.n_head} T{m.block_size} B{plan.batch_size}",
                "lr": plan.learning_rate, "optimizer": plan.optimizer, "precision": precision, "skipped": reason}
    recorder = Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        outcome = run_training(plan, corpus, Path(tmp), recorder, lambda: False)
        wall = time.perf_counter() - t0
        checkpoint = load_checkpoint(Path(tmp) / "checkpoints" / LATEST, device=device)
    progress = [e for e in recorder.events if isinstance(e, ProgressUpdate)]
    train_seconds = progress[-1].elapsed_seconds if progress else wall
    evaluator = Evaluator(data, plan.model.block_size, 64, resolve_runtime(plan.model_copy(
        update={"precision": "fp32"})))
    train_loss, val_loss = evaluator.losses(checkpoint.model)
    tokens = outcome.final_step * plan.batch_size * plan.model.block_size
    return {"recipe": label, "model": f"{m.n_layer}x{m.n_embd} h{m.n_head} T{m.block_size} B{plan.batch_size}",
            "lr": plan.learning_rate, "steps": outcome.final_step, "max_steps": plan.max_steps,
            "train_seconds": train_seconds, "wall_seconds_with_final_eval": wall,
            "tokens_per_second": tokens / max(train_seconds, 1e-9), "train_loss": train_loss,
            "val_loss": val_loss, "best_val_loss_seen": outcome.best_val_loss,
            "parameters": m.parameter_count(), "optimizer": plan.optimizer, "lr_schedule": plan.lr_schedule,
            "precision": precision, "skipped": None,
            # the engine's budget fitting, as it went (None: before its first estimate)
            "horizon_estimates": sorted({e.max_steps for e in progress if e.max_steps is not None}),
            "ms_per_step": 1000 * train_seconds / max(outcome.final_step, 1)}


def precision_name(plan: TrainingPlan) -> str:
    """What the engine trains in for this plan (precision "auto" resolved on this host)."""
    dtype = resolve_runtime(plan).autocast_dtype
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.").replace("bfloat16", "bf16")


PROFILE_FLAGS = {"n_layer": int, "n_head": int, "n_embd": int, "block_size": int, "batch_size": int,
                 "dropout": float, "learning_rate": float, "warmup_steps": int}
PLAN_FLAGS = {"optimizer": ("adamw", "muon"), "lr_schedule": ("cosine", "linear", "constant"),
              "precision": ("auto", "fp32", "bf16")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--config", default="cpu", help="a SIZE_PROFILES name (cpu, small, ...)")
    parser.add_argument("--budget", type=float, default=100.0, help="training seconds (budget mode)")
    parser.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead of a budget")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--eval-interval", type=int, default=None,
                        help="default: a tenth of --steps in steps mode; the end only in budget mode")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--min-lr-ratio", type=float, default=None, help="the preset's min LR over its LR (default: "
                        "its profile's min_lr_ratio)")
    parser.add_argument("--no-reference", action="store_true", help="train the preset only")
    for name, kind in PROFILE_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    for name, choices in PLAN_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, choices=choices, default=None,
                            help="default: the plan's")
    args = parser.parse_args(argv)
    if args.eval_interval is None:
        args.eval_interval = max(1, args.steps // 10) if args.steps else 0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    corpus = CorpusRef(corpus_id="bench", name=args.corpus.name, sha256="", path=args.corpus)
    data = CorpusData.from_file(args.corpus)
    vocab = data.tokenizer.vocab_size
    load_before = machine_facts()["load_average"]
    rows: list[dict[str, Any]] = []
    if args.steps:
        plan = make_plan(args.config, vocab, args, args.steps)
        device = resolve_runtime(plan).device
        rows.append(train(f"{args.config} ({args.steps} steps)", plan, corpus, data, device))
    else:
        plan = make_plan(args.config, vocab, args, None, max_seconds=args.budget)
        device = resolve_runtime(plan).device
        rows.append(train(f"{args.config} preset, budget-aware", plan, corpus, data, device))
        if not args.no_reference:
            rows.append(train(TUNED, tuned_plan(vocab, args), corpus, data, device))
            rows.append(train("reference (nanoGPT CPU recipe)", reference_plan(vocab, args), corpus, data, device))
    report(rows, args, load_before)


def report(rows: list[dict[str, Any]], args: argparse.Namespace, load_before: tuple[float, float, float]) -> None:
    facts = machine_facts()
    # the host's GEMM peaks, measured after the runs so they do not share the machine with them
    peak = host_peak()
    peaks = {"fp32": peak.gflops_fp32, "bf16": peak.gflops_bf16}
    print(f"load average before {tuple(round(x, 2) for x in load_before)}, after "
          f"{tuple(round(x, 2) for x in facts['load_average'])}; {facts['threads']} threads; GEMM peaks: fp32 "
          f"{peaks['fp32']:.0f}, bf16 {peaks['bf16']:.1f} GFLOP/s")
    print_table(["recipe", "model", "optimizer", "precision", "lr", "steps", "ms/step", "train s", "tokens/s",
                 "train loss", "val loss"],
                [[r["recipe"], r["model"], r["optimizer"], r["precision"], r["lr"],
                  *([r["skipped"]] + [""] * 5 if r["skipped"] else [r["steps"], r["ms_per_step"], r["train_seconds"],
                                                                    r["tokens_per_second"], r["train_loss"],
                                                                    r["val_loss"]])] for r in rows])
    target = target_check(rows)
    if target:
        print(f"target: preset {target['margin_nats']:+.3f} nats vs the tuned recipe (goal <= -{TARGET_MARGIN}): "
              f"{'met' if target['met'] else 'NOT met'}")
    path = write_result(f"train_quality_{args.config}", {
        "machine": facts, "gemm_gflops": peaks, "load_average_before": load_before,
        "budget_seconds": None if args.steps else args.budget,
        "target": target, "args": vars(args), "rows": rows})
    print(f"wrote {path}")


def target_check(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The preset's validation loss minus the tuned recipe's, against the goal of -TARGET_MARGIN."""
    tuned = [r for r in rows if r["recipe"] == TUNED and not r["skipped"]]
    if not tuned or rows[0]["skipped"]:
        return None
    margin = rows[0]["val_loss"] - tuned[0]["val_loss"]
    return {"margin_nats": margin, "goal_nats": -TARGET_MARGIN, "met": margin <= -TARGET_MARGIN}


if __name__ == "__main__":
    main()
