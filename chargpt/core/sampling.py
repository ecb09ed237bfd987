"""Next-character sampling: temperature (0 = greedy), top-k, top-p, per-request seeded generators, presets."""

from __future__ import annotations

import math
from enum import StrEnum

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chargpt.core.model import GPT
from chargpt.errors import InvalidArgumentError


class SamplingParams(BaseModel):
    """How to pick the next character from the model's logits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=1.0, ge=0.0, le=100.0, description="0 is greedy")
    top_k: int = Field(default=0, ge=0, description="keep the k most likely characters; 0 keeps all")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus mass; 1 keeps all")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Preset(StrEnum):
    """The notebook's three sampling settings."""

    FOCUSED = "focused"
    BALANCED = "balanced"
    CREATIVE = "creative"


PRESETS: dict[Preset, SamplingParams] = {
    Preset.FOCUSED: SamplingParams(temperature=0.3, top_k=5),
    Preset.BALANCED: SamplingParams(temperature=0.8, top_k=40),
    Preset.CREATIVE: SamplingParams(temperature=1.2, top_k=200),
}


def resolve_sampling(preset: Preset | None = None, temperature: float | None = None,
                     top_k: int | None = None, top_p: float | None = None) -> SamplingParams:
    """A preset (or the defaults) with any explicitly given field overriding it; validates every field."""
    base = PRESETS[preset] if preset is not None else SamplingParams()
    for field, value in (("temperature", temperature), ("top_p", top_p)):
        if value is not None and not math.isfinite(value):
            raise InvalidArgumentError(field, f"must be a finite number, got {value}")
    overrides = {k: v for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p))
                 if v is not None}
    try:
        return SamplingParams(**{**base.model_dump(), **overrides})
    except ValidationError as exc:  # report the first bad field by name
        first = exc.errors()[0]
        raise InvalidArgumentError(str(first["loc"][0]), first["msg"]) from None


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A private random stream for one request, so concurrent requests never disturb each other."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed % (2**64))
    return gen


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits (..., V) with everything outside top-k / top-p set to -inf."""
    logits = logits.float() / params.temperature
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the most likely always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from the logits (V,) of one sequence."""
    if params.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(filter_logits(logits, params), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_batch(logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator | None]) -> list[int]:
    """One token per row of logits (B, V), each row with its own settings and random stream."""
    return [sample_next(logits[i], params[i], generators[i]) for i in range(logits.shape[0])]


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, params: SamplingParams,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The notebook's simple loop (full recompute, context cropped to block_size): a reference and a fallback."""
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block_size:])
        next_ids = [sample_next(logits[b, -1], params, generator) for b in range(idx.shape[0])]
        idx = torch.cat([idx, torch.tensor(next_ids, device=idx.device)[:, None]], dim=1)
    return idx
