"""What a training event does to its job's row (step, losses, best loss): the worker's and the cluster follower's."""

from __future__ import annotations

from typing import Any

from trainer_service.training.api import CheckpointSaved, EvaluationResult, ProgressUpdate, TrainingEvent


class JobSummary:
    """Turns an event into its log payload and the job-row columns it updates (step, losses, best loss)."""

    def __init__(self, best_val_loss: float | None) -> None:
        self._best = best_val_loss

    def row(self, event: TrainingEvent) -> tuple[dict[str, Any], dict[str, Any]]:
        payload: dict[str, Any] = event.model_dump()
        update: dict[str, Any] = {}
        if isinstance(event, ProgressUpdate):
            update = {"step": event.step, "train_loss": event.loss, "tokens_per_second": event.tokens_per_second}
        elif isinstance(event, EvaluationResult):
            if self._best is None or event.val_loss < self._best:
                self._best = event.val_loss
            update = {"step": event.step, "train_loss": event.train_loss, "val_loss": event.val_loss,
                      "best_val_loss": self._best}
        elif isinstance(event, CheckpointSaved):
            payload["path"] = str(event.path)
        return payload, update

