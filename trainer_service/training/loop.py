"""The training loop: `run_training` trains one job (one process, or one torchrun/DDP rank) and resumes itself."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from chargpt.core.checkpoint import Manifest, TrainingInfo
from chargpt.core.model import GPT
from chargpt.errors import CheckpointNotFoundError, InvalidArgumentError
from chargpt.formats.checkpoint_dir import resolve_checkpoint_dir
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
    TrainingEvent,
    TrainingOutcome,
    TrainingPlan,
)
from trainer_service.training.data import CorpusData, mix_seed
from trainer_service.training.evaluate import Evaluator, attention_ids, attention_weights, sample_text
from trainer_service.training.optim import build_optimizer, set_learning_rate
from trainer_service.training.parent_weights import initialise_from_parent
from trainer_service.training.phases import PeriodicWork, Phases, build_schedule
from trainer_service.training.runtime import (
    Runtime,
    all_agree,
    micro_steps,
    process_group,
    resolve_runtime,
    split_evenly,
)
from trainer_service.training.state import ResumeState, checkpoint_size, load_resume, save_training_checkpoint
from trainer_service.training.tensorboard import TensorBoardLog

PROGRESS_INTERVAL_S = 1.0


def run_training(plan: TrainingPlan, corpus: CorpusRef, job_dir: Path, sink: EventSink,
                 should_stop: ShouldStop) -> TrainingOutcome:
    """Train `plan` on `corpus`, resuming from `job_dir/checkpoints/latest` if it exists.

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 alone emits events and writes checkpoints.
    Returns when max_steps is reached, or early (after writing `latest`) once should_stop() is true on any rank.
    """
    with process_group(resolve_runtime(plan)) as runtime:
        return Trainer(plan, corpus, job_dir, sink, runtime).run(should_stop)


class Trainer:
    """One process's share of a training job."""

    def __init__(self, plan: TrainingPlan, corpus: CorpusRef, job_dir: Path, sink: EventSink,
                 runtime: Runtime) -> None:
        self.plan, self.corpus, self.sink, self.rt = plan, corpus, sink, runtime
        self.checkpoints = job_dir / CHECKPOINTS_DIR
        parent = plan.init_from
        self.data = CorpusData.from_file(corpus.path, parent.vocabulary if parent is not None else "")
        self._check_plan()
        self.block = self.data.context_length(plan.model.block_size)
        shares = split_evenly(plan.batch_size, runtime.world_size)
        self.rank_offset = sum(shares[: runtime.rank])  # this rank's slice of each step's global batch
        self.micro_sizes = split_evenly(shares[runtime.rank], micro_steps(
            shares[runtime.rank], self.block, plan.grad_accumulation_steps, runtime.max_micro_batch_tokens))
        torch.manual_seed(mix_seed(plan.seed, "init"))  # identical initial weights on every rank
        self.model = GPT(plan.model).to(runtime.device)
        self.model.use_fast_dropout(runtime.fast_dropout)
        self.optimizer = build_optimizer(self.model, plan, runtime.device)
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.uses_grad_scaler)
        self.state = self._resume_or_start()
        self.train_model = self._wrap(self.model)
        self.evaluator = Evaluator(self.data, plan.model.block_size, 2 * max(self.micro_sizes), runtime)
        self.schedule = build_schedule(plan, self.state, self.evaluator, self.block, runtime)
        self.phases = Phases(self.schedule, self.evaluator,
                             PeriodicWork(self._evaluate, self._save_latest, self._sample), self._emit)
        self.phases.apply_budget(self.state.step)  # a resumed budget's evaluation size
        self.started, self.elapsed_before = time.perf_counter(), self.state.elapsed_seconds
        self.last_progress = (self.started, self.state.step)
        self.progress_sent = False
        self.grad_norm: torch.Tensor | None = None  # the last step's, kept on device until reported
        self.attention_ids = attention_ids(self.data, self.block)
        self.tensorboard = TensorBoardLog.open(plan, job_dir, self.state.step) if runtime.is_main else None
        if self.tensorboard is not None:
            self.tensorboard.describe(plan, corpus, self.data.tokenizer.decode(self.attention_ids.tolist()),
                                      self.state.step)

    def _check_plan(self) -> None:
        vocab = self.data.tokenizer.vocab_size
        if self.plan.model.vocab_size != vocab:
            raise InvalidArgumentError("model.vocab_size", f"is {self.plan.model.vocab_size} but the corpus "
                                                           f"has {vocab} distinct characters")
        needed = self.rt.world_size * self.plan.grad_accumulation_steps
        if self.plan.batch_size < needed:
            raise InvalidArgumentError("training.batch_size", f"{self.plan.batch_size} sequences cannot be "
                                       f"shared by {self.rt.world_size} processes x "
                                       f"{self.plan.grad_accumulation_steps} accumulation steps")

    def _resume_or_start(self) -> ResumeState:
        try:
            latest = resolve_checkpoint_dir(self.checkpoints / LATEST)
        except CheckpointNotFoundError:
            if self.plan.init_from is not None:  # a fine-tune's first run: the parent's weights, by character
                initialise_from_parent(self.model, self.plan.init_from, self.data.tokenizer)
            return ResumeState(world_size=self.rt.world_size)
        state = load_resume(latest, self.model, self.optimizer, self.data.tokenizer)
        if state.grad_scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(state.grad_scaler)
        return state

    def _wrap(self, model: GPT) -> nn.Module:
        wrapped: nn.Module = model
        if self.rt.compile:
            wrapped = torch.compile(model)  # type: ignore[assignment]
        if self.rt.distributed:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=ids)
        return wrapped

    # ---- the loop ----

    def run(self, should_stop: ShouldStop) -> TrainingOutcome:
        try:
            return self._run(should_stop)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _run(self, should_stop: ShouldStop) -> TrainingOutcome:
        plan = self.plan
        if self.state.step == 0 and self.plan.sample_interval and self.plan.max_seconds is None:
            self._sample()  # a budget's cost of sampling is unknown before a step is timed: it samples later
        while not self.schedule.finished(self.state.step):
            if all_agree(should_stop(), self.rt):
                self._save_latest()
                self._barrier()
                return self._outcome(stopped_early=True)
            started = time.perf_counter()
            loss = self._train_step(self.state.step)
            self.state.step += 1
            if plan.max_seconds is not None:
                self._synchronize()  # time the step itself, not the launch of its kernels
                self.phases.timed_step(self.state.step, time.perf_counter() - started, self._elapsed())
            self._after_step(loss)
        self._barrier()
        return self._outcome(stopped_early=False)

    def _train_step(self, step: int) -> torch.Tensor:
        """One optimizer step over this rank's share of the batch; returns its mean loss (on device)."""
        plan, rt = self.plan, self.rt
        torch.manual_seed(mix_seed(plan.seed, "dropout", step, rt.rank))
        set_learning_rate(self.optimizer, self.schedule.learning_rate(step))
        total = torch.zeros((), device=rt.device)
        last = len(self.micro_sizes) - 1
        starts = self.data.batch_starts(plan.batch_size, self.block, mix_seed(plan.seed, "batch", step))
        offset = self.rank_offset
        for micro, size in enumerate(self.micro_sizes):
            x, y = self._batch(starts[offset:offset + size])
            offset += size
            syncing = micro == last or not rt.distributed
            with contextlib.nullcontext() if syncing else self.train_model.no_sync():  # type: ignore[operator]
                with rt.autocast():
                    _, loss = self.train_model(x, y)
                # Weight each micro-batch by its share of the global batch: DDP's mean over ranks then
                # yields exactly the gradient of the mean loss over all plan.batch_size sequences.
                self.scaler.scale(loss * (size * rt.world_size / plan.batch_size)).backward()
            total += loss.detach() * (size / sum(self.micro_sizes))
        self.scaler.unscale_(self.optimizer)  # the norm and clipping are of the true gradient (no-op without fp16)
        if plan.grad_clip > 0:
            self.grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), plan.grad_clip)
        else:
            self.grad_norm = nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _batch(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.windows(starts, self.block)
        if self.rt.device.type == "cuda":
            return x.pin_memory().to(self.rt.device, non_blocking=True), y.pin_memory().to(
                self.rt.device, non_blocking=True)
        return x.to(self.rt.device), y.to(self.rt.device)

    def _after_step(self, loss: torch.Tensor) -> None:
        self._maybe_progress(loss, self.schedule.finished(self.state.step))
        self.phases.after_step(self.state.step)

    # ---- reporting ----

    def _maybe_progress(self, loss: torch.Tensor, final: bool) -> None:
        now = time.perf_counter()
        then, then_step = self.last_progress
        if not self.rt.is_main or not (final or not self.progress_sent or now - then >= PROGRESS_INTERVAL_S):
            return
        self.progress_sent = True
        steps = self.state.step - then_step
        per_step = (now - then) / steps
        self.last_progress = (now, self.state.step)
        horizon, left = self.schedule.horizon, self.schedule.seconds_left(self._elapsed())
        eta = left if left is not None else per_step * ((horizon or self.state.step) - self.state.step)
        self._emit(ProgressUpdate(
            step=self.state.step, max_steps=horizon, loss=float(loss),
            learning_rate=self.schedule.learning_rate(self.state.step - 1),
            tokens_per_second=steps * self.plan.batch_size * self.block / max(now - then, 1e-9),
            tokens_per_step=self.plan.batch_size * self.block, elapsed_seconds=self._elapsed(),
            eta_seconds=eta, grad_norm=None if self.grad_norm is None else float(self.grad_norm),
            budget_seconds_left=left))

    def _evaluate(self) -> None:
        train_loss, val_loss = self.evaluator.losses(self.model)
        best = self.state.best_val_loss
        is_best = best is None or val_loss < best
        self.state.train_loss, self.state.val_loss = train_loss, val_loss
        if is_best:
            self.state.best_val_loss = val_loss
        self._emit(EvaluationResult(step=self.state.step, train_loss=train_loss, val_loss=val_loss,
                                    is_best=is_best))
        if self.tensorboard is not None:
            self.tensorboard.attention(attention_weights(self.model, self.attention_ids, self.rt), self.state.step)
        if is_best and self.rt.is_main:
            self._announce(BEST, save_training_checkpoint(self.checkpoints / BEST, self.model,
                                                          self.data.tokenizer, self._info()))

    def _sample(self) -> None:
        if self.rt.is_main:
            text = sample_text(self.model, self.data, self.schedule.sample_length, self.plan.seed,
                               self.state.step, self.rt)
            self._emit(TextSample(step=self.state.step, text=text))

    def _save_latest(self) -> None:
        if not self.rt.is_main:
            return
        self.state.elapsed_seconds = self._elapsed()
        self.state.fitted, self.state.horizon = dict(self.schedule.fitted), self.schedule.horizon
        self.state.grad_scaler = self.scaler.state_dict() if self.scaler.is_enabled() else {}
        manifest = save_training_checkpoint(self.checkpoints / LATEST, self.model, self.data.tokenizer,
                                            self._info(), resume=(self.state, self.optimizer))
        self._announce(LATEST, manifest)

    def _announce(self, kind: str, manifest: Manifest) -> None:
        path = self.checkpoints / kind
        self._emit(CheckpointSaved(checkpoint_kind=kind, step=self.state.step, path=path,  # type: ignore[arg-type]
                                   train_loss=self.state.train_loss, val_loss=self.state.val_loss,
                                   weights_sha256=manifest.weights.sha256, size_bytes=checkpoint_size(path)))

    def _info(self) -> TrainingInfo:
        c = self.corpus
        return TrainingInfo(job_id=self.plan.job_id, corpus_id=c.corpus_id, corpus_name=c.name,
                            corpus_sha256=c.sha256, step=self.state.step, train_loss=self.state.train_loss,
                            val_loss=self.state.val_loss,
                            parent=None if self.plan.init_from is None else self.plan.init_from.lineage)

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.started)

    def _emit(self, event: TrainingEvent) -> None:
        if self.rt.is_main:
            self.sink.emit(event)
        if self.tensorboard is not None:
            self.tensorboard.emit(event)

    def _synchronize(self) -> None:
        if self.rt.device.type == "cuda":
            torch.cuda.synchronize(self.rt.device)

    def _barrier(self) -> None:
        if self.rt.distributed:
            dist.barrier()

    def _outcome(self, stopped_early: bool) -> TrainingOutcome:
        return TrainingOutcome(final_step=self.state.step, stopped_early=stopped_early,
                               schedule_complete=not stopped_early and self.schedule.finished(self.state.step),
                               best_val_loss=self.state.best_val_loss)

