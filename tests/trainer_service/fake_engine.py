"""A stand-in training engine for job-layer tests: paced fake steps, real checkpoints, real resume, real DDP.

It honours the engine contract (events through the sink on rank 0, checkpoints in the core format under
job_dir/checkpoints/{latest,best}, resume from latest, should_stop -> checkpoint -> return) without the cost of
real training; a fine-tune starts from its parent's weights as the real engine does. Environment knobs:
FAKE_ENGINE_STEP_SECONDS (pace), FAKE_ENGINE_FAIL_AT (raise at that step).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from chargpt.core.checkpoint import TrainingInfo, load_checkpoint, read_manifest, save_checkpoint
from chargpt.core.model import GPT
from chargpt.core.tokenizer import CharTokenizer
from trainer_service.training.api import (
    BEST,
    CHECKPOINTS_DIR,
    LATEST,
    CheckpointSaved,
    CorpusRef,
    EvaluationResult,
    EventSink,
    ProgressUpdate,
    ShouldStop,
    TextSample,
    TrainingOutcome,
    TrainingPlan,
)
from trainer_service.training.parent_weights import initialise_from_parent

STATE_FILE = "fake_state.json"


class _Run:
    def __init__(self, plan: TrainingPlan, corpus: CorpusRef, job_dir: Path, sink: EventSink) -> None:
        self.plan, self.corpus, self.job_dir, self.sink = plan, corpus, job_dir, sink
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        parent = plan.init_from  # a fine-tune's vocabulary is the union of its parent's and the corpus's
        text = corpus.path.read_text(encoding="utf-8") + (parent.vocabulary if parent is not None else "")
        self.tokenizer = CharTokenizer.from_text(text)
        torch.manual_seed(plan.seed)
        self.model = GPT(plan.model)
        self.step, self.loss, self.best = 0, math.nan, math.inf
        latest = job_dir / CHECKPOINTS_DIR / LATEST
        if (latest / STATE_FILE).is_file():
            self.model.load_state_dict(load_checkpoint(latest).model.state_dict())
            self.step = json.loads((latest / STATE_FILE).read_text())["step"]
        elif parent is not None:  # the real engine's start from the parent (verified against its weights hash)
            initialise_from_parent(self.model, parent, self.tokenizer)
        if (job_dir / CHECKPOINTS_DIR / BEST).is_dir():
            self.best = read_manifest(job_dir / CHECKPOINTS_DIR / BEST).training.val_loss or math.inf

    def agree(self, value: float, op: dist.ReduceOp) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor, op=op)
        return float(tensor.item())

    def save(self, kind: str, val_loss: float | None) -> None:
        if self.rank != 0:
            return
        started = time.monotonic()
        path = self.job_dir / CHECKPOINTS_DIR / kind
        info = TrainingInfo(job_id=self.plan.job_id, corpus_id=self.corpus.corpus_id, corpus_name=self.corpus.name,
                            corpus_sha256=self.corpus.sha256, step=self.step, train_loss=self.loss,
                            val_loss=val_loss)
        step = self.step
        manifest = save_checkpoint(path, self.model, self.tokenizer, info,
                                   write_extra=lambda d: (d / STATE_FILE).write_text(json.dumps({"step": step})))
        size = sum(f.stat().st_size for f in path.iterdir())
        self.sink.emit(CheckpointSaved(checkpoint_kind=kind, step=self.step, path=path,  # type: ignore[arg-type]
                                       train_loss=self.loss, val_loss=val_loss, size_bytes=size,
                                       weights_sha256=manifest.weights.sha256,
                                       write_seconds=time.monotonic() - started))

    def evaluate(self) -> None:
        val = self.loss + 0.1
        is_best = val < self.best
        if self.rank == 0:
            self.sink.emit(EvaluationResult(step=self.step, train_loss=self.loss, val_loss=val, is_best=is_best))
        if is_best:
            self.best = val
            self.save(BEST, val)

    def one_step(self, started: float, first_step: int) -> None:
        time.sleep(float(os.environ.get("FAKE_ENGINE_STEP_SECONDS", "0.05")))
        fail_at = int(os.environ.get("FAKE_ENGINE_FAIL_AT", "0"))
        if fail_at and self.step + 1 == fail_at:
            raise RuntimeError(f"fake engine failure at step {fail_at}")
        self.step += 1
        with torch.no_grad():
            next(self.model.parameters()).mul_(0.999)
        self.loss = self.agree(4.0 / (1 + 0.1 * self.step), dist.ReduceOp.SUM) / self.world
        elapsed = time.monotonic() - started
        rate = (self.step - first_step) / max(elapsed, 1e-9)
        if self.rank == 0:
            tokens = rate * self.plan.batch_size * self.plan.model.block_size
            self.sink.emit(ProgressUpdate(step=self.step, max_steps=self.plan.max_steps, loss=self.loss,
                                          learning_rate=self.plan.learning_rate, tokens_per_second=tokens,
                                          tokens_per_step=self.plan.batch_size * self.plan.model.block_size,
                                          elapsed_seconds=elapsed,
                                          eta_seconds=(self.plan.max_steps - self.step) / max(rate, 1e-9)))

    def periodic(self) -> None:
        p = self.plan
        if p.eval_interval and self.step % p.eval_interval == 0:
            self.evaluate()
        if p.sample_interval and self.step % p.sample_interval == 0 and self.rank == 0:
            ids = torch.randint(0, self.tokenizer.vocab_size, (p.sample_length,)).tolist()
            self.sink.emit(TextSample(step=self.step, text=self.tokenizer.decode(ids)))
        if p.checkpoint_interval and self.step % p.checkpoint_interval == 0:
            self.save(LATEST, None)


def run_training(plan: TrainingPlan, corpus: CorpusRef, job_dir: Path, sink: EventSink,
                 should_stop: ShouldStop) -> TrainingOutcome:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    run = _Run(plan, corpus, job_dir, sink)
    started, first_step = time.monotonic(), run.step
    try:
        while run.step < plan.max_steps:
            if run.agree(float(should_stop()), dist.ReduceOp.MAX):
                run.save(LATEST, None)
                return TrainingOutcome(final_step=run.step, stopped_early=True)
            run.one_step(started, first_step)
            run.periodic()
        run.evaluate()
        run.save(LATEST, run.best)
        return TrainingOutcome(final_step=run.step, stopped_early=False, best_val_loss=run.best)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
