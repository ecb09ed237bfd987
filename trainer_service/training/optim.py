"""AdamW with weight decay on matrices only, and the learning-rate schedule (warmup, then cosine/linear/constant)."""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from trainer_service.training.api import TrainingPlan

BETAS = (0.9, 0.99)  # nanoGPT's choice for small character models: the second moment adapts faster


def learning_rate_at(plan: TrainingPlan, step: int, horizon: int | None = None,
                     warmup_steps: int | None = None) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup, then decay reaching
    min_learning_rate at the horizon (max_steps, or where a time budget ends)."""
    peak, floor = plan.learning_rate, min(plan.min_learning_rate, plan.learning_rate)
    horizon = plan.max_steps if horizon is None else horizon
    warmup = plan.warmup_steps if warmup_steps is None else warmup_steps
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if plan.lr_schedule == "constant":
        return peak
    span = max(1, horizon - warmup)
    progress = min(1.0, (step - warmup) / span)
    if plan.lr_schedule == "linear":
        return peak - progress * (peak - floor)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Decay the weight matrices and embeddings (dim >= 2); never biases or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]  # the tied head appears once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, plan: TrainingPlan, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where this torch supports it on the device (CPU and CUDA)."""
    kwargs: dict[str, object] = {}
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in ("cpu", "cuda"):
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(parameter_groups(model, plan.weight_decay), lr=learning_rate_at(plan, 0),
                             betas=BETAS, **kwargs)  # type: ignore[arg-type]


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
