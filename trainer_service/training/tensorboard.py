"""Rank 0's TensorBoard log: losses, learning rate, throughput, gradient norm, text samples, attention heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer_service.training.api import (
    TENSORBOARD_DIR,
    CorpusRef,
    EvaluationResult,
    ProgressUpdate,
    TextSample,
    TrainingEvent,
    TrainingPlan,
)

FLUSH_SECONDS = 10  # a live `tensorboard --logdir` sees new points this soon (torch's default is 120 s)
TILE_PIXELS = 128  # each head's T x T map is scaled up by whole pixels to about this size
SEPARATOR = 0.5  # mid-grey lines between the tiles


class TensorBoardLog:
    """A SummaryWriter on `job_dir/tensorboard/<run>` that turns training events into summaries.

    A resumed job appends new event files to the same run; `purge_step` makes TensorBoard hide whatever the
    killed process logged after the checkpoint it resumes from, so every step appears once.
    """

    def __init__(self, log_dir: Path, resumed_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports the tensorboard package: only when logging

        self.log_dir = log_dir
        self.writer = SummaryWriter(str(log_dir), purge_step=resumed_step + 1 if resumed_step else None,
                                    flush_secs=FLUSH_SECONDS)

    @classmethod
    def open(cls, plan: TrainingPlan, job_dir: Path, resumed_step: int) -> TensorBoardLog | None:
        """The job's log, or None when the plan has TensorBoard off."""
        if plan.tensorboard_run is None:
            return None
        return cls(job_dir / TENSORBOARD_DIR / plan.tensorboard_run, resumed_step)

    def describe(self, plan: TrainingPlan, corpus: CorpusRef, attention_text: str, step: int) -> None:
        """The job's identity and hyperparameters, shown in TensorBoard's text tab."""
        self.writer.add_text("job", f"job `{plan.job_id}` on corpus `{corpus.name}` (`{corpus.corpus_id}`)\n\n"
                                    f"attention heatmaps show the text {code_block(attention_text)}\n"
                                    f"plan: {code_block(plan.model_dump_json(indent=2))}", step)

    def emit(self, event: TrainingEvent) -> None:
        w = self.writer
        if isinstance(event, ProgressUpdate):
            w.add_scalar("loss/step", event.loss, event.step)
            w.add_scalar("optim/learning_rate", event.learning_rate, event.step)
            w.add_scalar("perf/tokens_per_second", event.tokens_per_second, event.step)
            if event.grad_norm is not None:
                w.add_scalar("optim/grad_norm", event.grad_norm, event.step)
        elif isinstance(event, EvaluationResult):
            w.add_scalar("loss/train", event.train_loss, event.step)
            w.add_scalar("loss/val", event.val_loss, event.step)
        elif isinstance(event, TextSample):
            w.add_text("samples", code_block(event.text), event.step)

    def attention(self, weights: torch.Tensor, step: int) -> None:
        """Heatmaps of (n_layer, n_head, T, T) attention weights: one row per layer, one column per head."""
        self.writer.add_image("attention", heatmap_grid(weights), step, dataformats="HW")

    def close(self) -> None:
        self.writer.close()


def code_block(text: str) -> str:
    """Text as a Markdown code block, so TensorBoard keeps its newlines and spaces."""
    return "\n\n```\n" + text.replace("```", "`\u200b``") + "\n```\n\n"


def heatmap_grid(weights: torch.Tensor) -> np.ndarray:
    """A grayscale image in [0, 1] (white = weight 1) tiling (L, H, T, T) weights, with separator lines."""
    L, H, T, _ = weights.shape
    scale = max(1, TILE_PIXELS // T)
    tiles = weights.float().cpu().numpy().repeat(scale, axis=2).repeat(scale, axis=3)  # (L, H, T*s, T*s)
    side = T * scale
    grid = np.full((L * (side + 1) - 1, H * (side + 1) - 1), SEPARATOR, dtype=np.float32)
    for layer in range(L):
        for head in range(H):
            top, left = layer * (side + 1), head * (side + 1)
            grid[top:top + side, left:left + side] = tiles[layer, head]
    return grid
