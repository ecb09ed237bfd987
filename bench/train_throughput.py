"""Training throughput: tokens/s and model FLOPs utilisation of the engine against a plain fp32 eager loop.

    python -m bench.train_throughput [--configs notebook,cpu] [--rounds N] [--compile-notebook] [--quick]

Every variant trains the same model on the same batches in this process, and their steps are timed
round-robin (one step of each variant per round), so other load on the machine hits all of them alike; the
median step counts. The reference is the notebook's loop (fp32, eager, default AdamW, zero_grad) on chargpt's
model, which is nanoGPT's (SDPA attention), so it is also the nanoGPT fp32 peer; the nanoGPT bf16 peer is
nanoGPT's train.py step (autocast bf16, AdamW betas 0.9/0.95 with weight decay, clipping at 1.0,
zero_grad(set_to_none=True)). The engine variants run `Trainer._train_step` exactly as jobs do. Issue 13's
target: engine auto >= 1.1x the faster peer. A variant the host's GEMM peaks make hopeless (bf16 emulated, issue 25)
is a row saying why instead (bench/host.py). MFU = (6 N + attention) FLOPs per token x tokens/s over
a GEMM peak measured in the same run for the dtype the variant computes its matmuls in.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.host import host_peak, skip_reason
from bench.train_common import (
    DEFAULT_CORPUS,
    flops_per_token,
    machine_facts,
    print_table,
    write_result,
)
from chargpt.core.config import ModelConfig
from chargpt.core.device import SIZE_PROFILES
from chargpt.core.measurements import GemmPeak
from chargpt.core.model import GPT
from trainer_service.training.api import CorpusRef, TrainingPlan
from trainer_service.training.data import CorpusData
from trainer_service.training.loop import Trainer
from trainer_service.training.runtime import resolve_runtime

CONFIGS = {"notebook": SIZE_PROFILES["small"], "cpu": SIZE_PROFILES["cpu"]}
Step = Callable[[int], object]
ROUNDS = {"notebook": (3, 1), "cpu": (15, 3)}  # timed steps per variant: (default, --quick)


class NullSink:
    def emit(self, event: object) -> None:
        pass


def plan_for(name: str, vocab_size: int, precision: str = "auto", compile_mode: str = "off") -> TrainingPlan:
    p = CONFIGS[name]
    model = ModelConfig(vocab_size=vocab_size, n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd,
                        block_size=p.block_size, dropout=p.dropout)
    return TrainingPlan(job_id=f"bench-{name}", model=model, max_steps=10**6, batch_size=p.batch_size,
                        learning_rate=p.learning_rate, min_learning_rate=p.learning_rate / 10,
                        warmup_steps=p.warmup_steps, weight_decay=0.1, grad_clip=1.0, eval_interval=0,
                        sample_interval=0, sample_length=1, seed=0, precision=precision,  # type: ignore[arg-type]
                        compile=compile_mode, checkpoint_interval=0, device="cpu")  # type: ignore[arg-type]


def reference_step(plan: TrainingPlan, data: CorpusData) -> Step:
    """The notebook's plain loop: fp32, eager, default AdamW, zero_grad, no clipping or autocast."""
    torch.manual_seed(0)
    model = GPT(plan.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate)

    def step(i: int) -> None:
        x, y = data.batch(plan.batch_size, plan.model.block_size, seed=i)
        _, loss = model(x, y)
        optimizer.zero_grad()
        assert loss is not None
        loss.backward()
        optimizer.step()
    return step


def nanogpt_bf16_step(plan: TrainingPlan, data: CorpusData) -> Step:
    """nanoGPT's train.py step under bf16 autocast (its loop on CPU would skip autocast: this is the bf16 peer)."""
    torch.manual_seed(0)
    model = GPT(plan.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate, betas=(0.9, 0.95), weight_decay=0.1)

    def step(i: int) -> None:
        x, y = data.batch(plan.batch_size, plan.model.block_size, seed=i)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(x, y)
        assert loss is not None
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


PEERS = {"reference fp32 eager": reference_step, "nanoGPT bf16 autocast": nanogpt_bf16_step}


def variants(name: str, vocab: int, compile_too: bool) -> list[tuple[str, TrainingPlan | None]]:
    """(label, plan) pairs; plan None is a peer loop (PEERS)."""
    out: list[tuple[str, TrainingPlan | None]] = [("reference fp32 eager", None), ("nanoGPT bf16 autocast", None),
                                                   ("engine auto", plan_for(name, vocab)),
                                                   ("engine bf16 autocast", plan_for(name, vocab, "bf16"))]
    if compile_too:
        out.append(("engine auto + compile", plan_for(name, vocab, compile_mode="on")))
    return out


def measure(name: str, corpus: CorpusRef, data: CorpusData, rounds: int, compile_too: bool,
            peaks: GemmPeak, tmp: Path) -> list[dict[str, Any]]:
    vocab = data.tokenizer.vocab_size
    model = plan_for(name, vocab).model
    tokens = CONFIGS[name].batch_size * model.block_size
    gflop = flops_per_token(model, model.block_size) * tokens / 1e9  # one optimizer step's matmul work
    steps: list[Step] = []
    rows: list[dict[str, Any]] = []
    for label, plan in variants(name, vocab, compile_too):
        bf16 = "bf16" in label if plan is None else resolve_runtime(plan).autocast_dtype == torch.bfloat16
        row: dict[str, Any] = {"config": name, "variant": label, "dtype": "bf16" if bf16 else "fp32", "times": []}
        row["skipped"] = skip_reason(row["dtype"], gflop, peaks)  # a hopeless variant is a row saying why
        if row["skipped"] is None:
            row["warmup_s"], step = warmed_step(name, label, plan, corpus, data, tmp)
            steps.append(step)
        rows.append(row)
    timed = [r for r in rows if r["skipped"] is None]
    for r in range(rounds):
        for row, step in zip(timed, steps, strict=True):
            t0 = time.perf_counter()
            step(100 + r)
            row["times"].append(time.perf_counter() - t0)
    for row in timed:
        row["step_s"] = statistics.median(row["times"])
        row["tokens_per_s"] = tokens / row["step_s"]
        peak = peaks.gflops_bf16 if row["dtype"] == "bf16" else peaks.gflops_fp32
        row["mfu_vs_measured_peak"] = flops_per_token(model, model.block_size) * row["tokens_per_s"] / (peak * 1e9)
    peers = [r["tokens_per_s"] for r in rows[:len(PEERS)] if r["skipped"] is None]
    for row in timed:
        row["speedup_vs_reference"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
        row["speedup_vs_faster_peer"] = row["tokens_per_s"] / max(peers)
    return rows


def warmed_step(name: str, label: str, plan: TrainingPlan | None, corpus: CorpusRef, data: CorpusData,
                tmp: Path) -> tuple[float, Step]:
    """A variant's step function, run once (three times when compiling: compilation happens here)."""
    if plan is None:
        step = PEERS[label](plan_for(name, data.tokenizer.vocab_size, "fp32"), data)
    else:
        trainer = Trainer(plan, corpus, tmp / label.replace(" ", "_"), NullSink(), resolve_runtime(plan))
        step = trainer._train_step
    t0 = time.perf_counter()
    for i in range(3 if plan is not None and plan.compile == "on" else 1):
        step(i)
    return time.perf_counter() - t0, step


def row_cells(r: dict[str, Any]) -> list[Any]:
    if r["skipped"] is not None:
        return [r["config"], r["variant"], r["dtype"], r["skipped"], "", "", "", "", ""]
    return [r["config"], r["variant"], r["dtype"], r["warmup_s"], r["step_s"], r["tokens_per_s"],
            f"{100 * r['mfu_vs_measured_peak']:.1f}%", f"{r['speedup_vs_reference']:.2f}x",
            f"{r['speedup_vs_faster_peer']:.2f}x"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="notebook,cpu")
    parser.add_argument("--rounds", type=int, default=0, help="timed steps per variant (0: 3 notebook, 15 cpu)")
    parser.add_argument("--compile-notebook", action="store_true", help="also compile the notebook model (slow)")
    parser.add_argument("--quick", action="store_true", help="one timed round (notebook) or three (cpu), no "
                        "compilation: checks the benchmark runs, on the slowest host too")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = parser.parse_args(argv)
    corpus = CorpusRef(corpus_id="bench", name=args.corpus.name, sha256="", path=args.corpus)
    data = CorpusData.from_file(args.corpus)
    load_before = machine_facts()["load_average"]
    peaks = host_peak()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            rounds = args.rounds or ROUNDS[name][args.quick]
            compile_too = not args.quick and (name != "notebook" or args.compile_notebook)
            rows += measure(name, corpus, data, rounds, compile_too, peaks, Path(tmp))
    facts = machine_facts()
    print(f"GEMM peak measured: fp32 {peaks.gflops_fp32:.0f} GFLOP/s, bf16 {peaks.gflops_bf16:.1f} GFLOP/s; "
          f"{torch.get_num_threads()} threads; load average before {load_before}, after {facts['load_average']}")
    print_table(["config", "variant", "dtype", "warm-up s", "step s", "tokens/s", "MFU", "vs reference",
                 "vs faster peer"],
                [row_cells(r) for r in rows])
    print("issue 13 targets: engine auto >= 1.1x the faster peer on the notebook config, >= 1.0x the fp32 "
          "reference on every config")
    path = write_result("train_throughput", {"machine": facts, "load_average_before": load_before,
                                             "peaks_gflops": {"fp32": peaks.gflops_fp32, "bf16": peaks.gflops_bf16},
                                             "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
