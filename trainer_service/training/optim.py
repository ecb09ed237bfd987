"""The optimizer (AdamW, or Muon for hidden matrices with AdamW for the rest) and the learning-rate schedule."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from trainer_service.training.api import TrainingPlan

BETAS = (0.9, 0.99)  # nanoGPT's choice for small character models: the second moment adapts faster
MUON_MOMENTUM = 0.95  # Keller Jordan's default, kept by torch.optim.Muon


def learning_rate_at(plan: TrainingPlan, step: int, horizon: int | None = None,
                     warmup_steps: int | None = None) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup, then decay reaching
    min_learning_rate at the horizon (default max_steps; where a time budget ends). With no horizon at all (a
    budget without max_steps, still timing its first steps) the decay has not begun: the peak."""
    peak, floor = plan.learning_rate, min(plan.min_learning_rate, plan.learning_rate)
    horizon = plan.max_steps if horizon is None else horizon
    warmup = plan.warmup_steps if warmup_steps is None else warmup_steps
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if plan.lr_schedule == "constant" or horizon is None:
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


def muon_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The hidden weight matrices Muon orthogonalises: every 2-D weight inside the transformer blocks.

    The token embedding (tied to the output head), the position embedding, LayerNorm gains and biases stay
    with AdamW: Muon's update treats a matrix as a linear map between hidden spaces, which they are not.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Module):
        raise TypeError(f"{type(model).__name__} has no transformer blocks for Muon")
    return [p for p in blocks.parameters() if p.requires_grad and p.dim() == 2]


def build_optimizer(model: nn.Module, plan: TrainingPlan, device: torch.device) -> torch.optim.Optimizer:
    """The plan's optimizer; its AdamW is fused into one kernel per step where this torch supports it."""
    lr = learning_rate_at(plan, 0)
    if plan.optimizer == "adamw":
        return adamw(parameter_groups(model, plan.weight_decay), lr, device)
    hidden = muon_parameters(model)
    hidden_ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden_ids]
    # Moonshot's scaling ("match_rms_adamw") gives Muon's update the RMS of an AdamW one, so one learning rate
    # and weight decay serve both halves.
    muon = Muon(hidden, lr=lr, weight_decay=plan.weight_decay, momentum=MUON_MOMENTUM,
                            adjust_lr_fn="match_rms_adamw")
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": plan.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    return MuonWithAdamW(muon, adamw(groups, lr, device))


def adamw(groups: list[dict[str, object]], lr: float, device: torch.device) -> torch.optim.AdamW:
    kwargs: dict[str, object] = {}
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in ("cpu", "cuda"):
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, **kwargs)  # type: ignore[arg-type]


class Muon(torch.optim.Muon):
    """torch.optim.Muon (same hyper-parameters, state and update) with a faster Newton-Schulz off CUDA.

    torch orthogonalises each matrix alone in bf16. CPUs without a fast bf16 path for matrices this small spend
    4x longer on them than in fp32 (35 vs 8 ms a step for the CPU preset's 16 matrices, 2 cores): there it runs
    in fp32, and on every device the matrices of one shape go through one batched product.
    """

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            buffers: list[torch.Tensor] = []
            self._init_group(group, params, grads, buffers)
            if not params:
                continue
            momentum, lr = group["momentum"], group["lr"]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)  # momentum as an EMA of gradients, like torch's
            updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(p.shape), []).append(i)
            for shape, indices in by_shape.items():
                ortho = orthogonalize(torch.stack([updates[i] for i in indices]), group["ns_coefficients"],
                                      group["ns_steps"], group["eps"])
                scale = _muon_lr_scale(group["adjust_lr_fn"], shape)
                for p, o in zip((params[i] for i in indices), ortho, strict=True):
                    p.mul_(1 - lr * group["weight_decay"])
                    p.add_(o.to(p.dtype), alpha=-lr * scale)


def _muon_lr_scale(adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))  # Keller Jordan's original scaling, torch's default


def orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
                  ) -> torch.Tensor:
    """Newton-Schulz's approximate U V^T of each matrix in g (n, rows, cols), with Muon's quintic iteration."""
    a, b, c = coefficients
    x = g.to(torch.bfloat16 if g.device.type == "cuda" else torch.float32)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT  # iterate on the wide side: the Gram matrix is the smaller one
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon and AdamW stepping as one optimizer, so the loop, GradScaler and resume state see a single one.

    Its param_groups are the two optimizers' own group dicts (Muon's first) and all three share one state dict
    (their parameters are disjoint): state_dict() and load_state_dict() cover both, in one index space.
    """

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__(muon.param_groups + adamw.param_groups, defaults={})
        self._share()

    def _share(self) -> None:
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        self.muon.step()
        self.adamw.step()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # replaces self.state and self.param_groups: share them again
        self._share()


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
