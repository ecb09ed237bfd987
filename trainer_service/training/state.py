"""Checkpoint writing and the resume state kept beside the weights in `latest` (safetensors + JSON, no pickle).

Resume state files in a `latest` checkpoint directory:
    optimizer.safetensors   every AdamW state tensor (exp_avg, exp_avg_sq, step), keyed "<param index>.<name>"
    resume.json             step, elapsed time, best/last losses, optimizer param groups and scalar state,
                            GradScaler state, and how the data order is derived

No random-number-generator state needs saving: every random choice of step s (batch positions; dropout masks,
per rank; samples) comes from generators seeded by (plan.seed, s[, rank]), so a resumed job replays the exact
data order and dropout masks of an uninterrupted one, on every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file

from chargpt.core.checkpoint import Manifest, TrainingInfo, load_checkpoint, save_checkpoint
from chargpt.core.model import GPT
from chargpt.core.tokenizer import CharTokenizer
from chargpt.errors import DataLossError, FailedPreconditionError

OPTIMIZER_FILE = "optimizer.safetensors"
RESUME_FILE = "resume.json"
DATA_ORDER = "step s draws its global batch from a generator seeded blake2b(seed, 'batch', s); ranks and " \
             "micro-batches take consecutive slices"


class ResumeState(BaseModel):
    """Where training stands; everything the loop needs to continue exactly."""

    model_config = ConfigDict(extra="ignore")

    step: int = 0
    elapsed_seconds: float = 0.0
    best_val_loss: float | None = None
    train_loss: float | None = None  # of the latest evaluation
    val_loss: float | None = None
    world_size: int = 1
    data_order: str = DATA_ORDER
    optimizer_groups: list[dict[str, Any]] = []
    optimizer_scalars: dict[str, dict[str, Any]] = {}
    grad_scaler: dict[str, Any] = {}
    fitted: dict[str, int] = {}  # a time budget's warmup/intervals, fitted at calibration
    horizon: int | None = None  # a time budget's last step estimate


def save_training_checkpoint(path: Path, model: GPT, tokenizer: CharTokenizer, info: TrainingInfo,
                             resume: tuple[ResumeState, torch.optim.Optimizer] | None = None) -> Manifest:
    """Write a checkpoint atomically; with `resume`, the optimizer and loop state go in the same directory."""
    write_extra = None if resume is None else (lambda tmp: _write_resume(tmp, *resume))
    return save_checkpoint(path, model, tokenizer, info, write_extra=write_extra)


def _write_resume(directory: Path, state: ResumeState, optimizer: torch.optim.Optimizer) -> None:
    full = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in full["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    state = state.model_copy(update={"optimizer_groups": full["param_groups"], "optimizer_scalars": scalars})
    (directory / RESUME_FILE).write_text(state.model_dump_json(indent=2), encoding="utf-8")


def checkpoint_size(path: Path) -> int:
    """Total bytes of a checkpoint directory's files."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def load_resume(path: Path, model: GPT, optimizer: torch.optim.Optimizer, tokenizer: CharTokenizer
                ) -> ResumeState:
    """Load weights and optimizer state from a `latest` checkpoint written by this engine."""
    checkpoint = load_checkpoint(path)  # verifies the weights' hash and shapes
    if checkpoint.manifest.model != model.config or checkpoint.tokenizer != tokenizer:
        raise FailedPreconditionError(f"the checkpoint at {path} was trained with a different model config or "
                                      "vocabulary than this job's plan and corpus; cannot resume")
    directory = checkpoint.path
    try:
        state = ResumeState.model_validate_json((directory / RESUME_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / OPTIMIZER_FILE))
    except FileNotFoundError:
        raise FailedPreconditionError(f"{directory} has no resume state ({RESUME_FILE}, {OPTIMIZER_FILE})"
                                      ) from None
    except (ValueError, OSError) as exc:
        raise DataLossError(f"resume state in {directory} is unreadable: {exc}") from None
    with torch.no_grad():
        for target, source in zip(model.state_dict().values(), checkpoint.model.state_dict().values(),
                                  strict=True):
            target.copy_(source)
    optimizer.load_state_dict(_optimizer_state_dict(state, tensors))
    return state


def _optimizer_state_dict(state: ResumeState, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    for index, scalars in state.optimizer_scalars.items():
        per_param.setdefault(int(index), {}).update(scalars)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in state.optimizer_groups]
    return {"state": per_param, "param_groups": groups}


