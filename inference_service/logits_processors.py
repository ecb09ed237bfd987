"""Per-request logits processors (penalties, logit bias, min-p) applied to a batch before the sampler.

Each row has its own settings (SamplingParams); a step with no row using any control returns the logits
untouched, so the common case costs nothing. Order, as vLLM applies them: repetition penalty,
frequency/presence penalties, logit bias, then min-p (relative to the temperature-scaled distribution the
sampler will draw from). The sampler then applies temperature, top-k and top-p. Log-probabilities are taken
from the raw logits, before any of this (see inference_service/logprobs.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from chargpt.sampling_params import SamplingParams

F32_MAX = torch.finfo(torch.float32).max


def tracks_history(params: SamplingParams) -> bool:
    """Whether the penalties need the sequence's history (any of them set)."""
    return params.repetition_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0


def has_controls(params: SamplingParams) -> bool:
    """Whether any processor here changes this request's logits (the defaults change nothing)."""
    return tracks_history(params) or params.min_p > 0.0 or bool(params.logit_bias)


class PenaltyState:
    """What the penalties need to know about one sequence: characters seen (prompt and generated) and how often
    each was generated."""

    def __init__(self, prompt_ids: list[int], vocab_size: int) -> None:
        self.seen = torch.zeros(vocab_size, dtype=torch.bool)  # (V,)
        self.seen[torch.tensor(prompt_ids, dtype=torch.long)] = True
        self.counts = torch.zeros(vocab_size)  # (V,) generated occurrences

    def observe(self, token: int) -> None:
        self.seen[token] = True
        self.counts[token] += 1


@dataclass
class RowControls:
    """A batch row as the processor sees it."""

    params: SamplingParams
    state: PenaltyState | None
    bias: tuple[tuple[int, float], ...] = ()  # params.logit_bias by the model's character ids


def apply_controls(logits: torch.Tensor, rows: list[RowControls]) -> torch.Tensor:
    """Logits (B, V) with each row's controls applied (a float32 CPU copy), or the input if no row has any."""
    if not any(has_controls(r.params) for r in rows):
        return logits
    logits = logits.float().cpu().clone()
    if any(tracks_history(r.params) for r in rows):
        logits = _penalise(logits, rows)
    if any(r.bias for r in rows):
        bias = torch.zeros_like(logits)
        for i, row in enumerate(rows):
            for token, value in row.bias:
                bias[i, token] = value
        logits += bias
    if any(r.params.min_p > 0.0 and r.params.temperature > 0.0 for r in rows):
        logits = _min_p(logits, rows)
    return logits


def _penalise(logits: torch.Tensor, rows: list[RowControls]) -> torch.Tensor:
    """CTRL repetition penalty over seen characters, then OpenAI's frequency and presence penalties."""
    vocab = logits.shape[1]
    empty_seen, empty_counts = torch.zeros(vocab, dtype=torch.bool), torch.zeros(vocab)
    seen = torch.stack([r.state.seen if r.state else empty_seen for r in rows])  # (B, V)
    counts = torch.stack([r.state.counts if r.state else empty_counts for r in rows])  # (B, V)
    repetition = torch.tensor([r.params.repetition_penalty for r in rows], dtype=torch.float64)[:, None]
    wide = logits.double()
    # In float64 and clamped to float32's range: a tiny penalty (1e-40) would push a finite logit to +-inf, which
    # reads as a broken model; the clamp keeps the order it asks for. Masked (-inf) logits stay masked.
    penalised = torch.where(wide > 0, wide / repetition, wide * repetition).clamp(-F32_MAX, F32_MAX).float()
    logits = torch.where(seen & torch.isfinite(logits), penalised, logits)
    frequency = torch.tensor([r.params.frequency_penalty for r in rows])[:, None]
    presence = torch.tensor([r.params.presence_penalty for r in rows])[:, None]
    return logits - frequency * counts - presence * (counts > 0).float()


def _min_p(logits: torch.Tensor, rows: list[RowControls]) -> torch.Tensor:
    """Mask characters with p_T(c) < min_p * max p_T, i.e. logit < max_logit + T * ln(min_p) (no softmax)."""
    offsets = [r.params.temperature * math.log(r.params.min_p) if r.params.min_p > 0.0 and r.params.temperature > 0.0
               else -math.inf for r in rows]
    threshold = logits.max(dim=-1, keepdim=True).values + torch.tensor(offsets)[:, None]  # (B, 1)
    return logits.masked_fill(logits < threshold, float("-inf"))
