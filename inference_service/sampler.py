"""Vectorised next-character sampling for a decode batch where every row has its own settings and seed.

Each request owns a `random.Random` seeded from its seed and draws exactly one uniform number per sampled
character; the batch is filtered (temperature, top-k, top-p) in one set of tensor ops and each row picks the
character whose cumulative probability first exceeds its number (inverse-CDF sampling). A request's draws
therefore never depend on which other requests share the batch, so a seed reproduces the same text alone or
batched, and the whole batch needs no per-row torch calls.

The distribution of each row is exactly `chargpt.core.sampling.filter_logits`'s (tests/inference_service/
test_sampler_properties.py holds both to a float64 reference): logits are ranked once (stable: equal logits by
index), shifted so the largest is 0 before the temperature divides them (no overflow at any temperature), and a
row whose logits are NaN or +inf gets None instead of a character.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from chargpt.core.sampling import non_finite_rows
from chargpt.sampling_params import SamplingParams


@dataclass
class RowSampling:
    """One row's settings and random stream."""

    params: SamplingParams
    rng: random.Random


class BatchSampler:
    """Per-row settings as tensors, rebuilt only when the batch's membership changes."""

    def __init__(self) -> None:
        self._rows: list[RowSampling] = []
        self._dirty = True
        self._temperature = torch.empty(0)
        self._top_k = torch.empty(0, dtype=torch.long)
        self._top_p = torch.empty(0)
        self._greedy_rows = torch.empty(0, dtype=torch.bool)
        self._all_greedy = self._any_greedy = self._any_top_k = self._any_top_p = False

    def set_rows(self, rows: list[RowSampling]) -> None:
        self._rows = rows
        self._dirty = True

    def _rebuild(self, vocab: int) -> None:
        params = [r.params for r in self._rows]
        self._all_greedy = all(p.greedy for p in params)
        self._any_greedy = any(p.greedy for p in params)
        # Greedy rows divide by 1 (their sampled pick is replaced by the argmax), never by a tiny temperature.
        self._temperature = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params])[:, None]
        ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
        self._any_top_k = any(k < vocab for k in ks)
        self._top_k = torch.tensor(ks, dtype=torch.long)[:, None] - 1
        # top_p = 1 keeps everything: an infinite threshold, since a float32 cumsum can pass 1.0 before the end.
        self._any_top_p = any(p.top_p < 1.0 for p in params)
        self._top_p = torch.tensor([p.top_p if p.top_p < 1.0 else math.inf for p in params])[:, None]
        self._greedy_rows = torch.tensor([p.greedy for p in params], dtype=torch.bool)
        self._dirty = False

    def _prepare(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 host logits (B, V) with broken rows zeroed (so they cannot spread NaN), and the broken mask."""
        if self._dirty:
            self._rebuild(logits.shape[-1])
        logits = logits.float().cpu()  # (B, V) is tiny; the token ids are needed on the host anyway
        broken = non_finite_rows(logits)
        if bool(broken.any()):
            logits = logits.masked_fill(broken[:, None], 0.0)
        return logits, broken

    def _sorted_probs(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's probabilities in descending-logit order (B, V), and that order (B, V)."""
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
        # <= 0, the first exactly 0; in float64, since logits may span more than float32's range (filter_logits)
        scaled = ((sorted_logits.double() - sorted_logits[:, :1].double()) / self._temperature).float()
        if self._any_top_k:  # keep values >= the k-th largest (ties kept, as filter_logits does)
            kth = sorted_logits.gather(1, self._top_k)
            scaled = scaled.masked_fill(sorted_logits < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if self._any_top_p:  # drop a character once the mass before it reaches top_p; the first always stays
            mass_before = probs.cumsum(dim=-1) - probs
            probs = probs.masked_fill(mass_before >= self._top_p, 0.0)
        return probs, order

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution each row samples from (B, V), in vocabulary order; NaN rows where logits broke."""
        logits, broken = self._prepare(logits)
        greedy = torch.zeros_like(logits).scatter_(1, logits.argmax(dim=-1, keepdim=True), 1.0)
        if self._all_greedy:
            return greedy.masked_fill(broken[:, None], math.nan)
        probs, order = self._sorted_probs(logits)
        probs = torch.zeros_like(probs).scatter_(1, order, probs / probs.sum(dim=-1, keepdim=True))
        probs = torch.where(self._greedy_rows[:, None], greedy, probs)
        return probs.masked_fill(broken[:, None], math.nan)

    def sample(self, logits: torch.Tensor) -> list[int | None]:
        """One character id per row of logits (B, V), in the order given to set_rows; None for a row whose
        logits hold NaN or +inf (or are all -inf), which its request must fail on."""
        logits, broken = self._prepare(logits)
        chosen = logits.argmax(dim=-1) if self._all_greedy else self._draw(logits)
        return [None if bad else token for token, bad in zip(chosen.tolist(), broken.tolist(), strict=True)]

    def _draw(self, logits: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF picks (B,) from each row's own uniform number; greedy rows take the first argmax."""
        probs, order = self._sorted_probs(logits)
        cdf = probs.double().cumsum(dim=-1)
        draws = torch.tensor([0.0 if r.params.greedy else r.rng.random() for r in self._rows], dtype=torch.float64)
        picks = torch.searchsorted(cdf, draws[:, None] * cdf[:, -1:], right=True)
        # Kept characters are a prefix of the order (probabilities fall along it). A draw at the very top of the CDF
        # stays on the last of them, never on a dropped character behind it (float32 draws could round to 1.0).
        last_kept = (probs > 0).sum(dim=-1, keepdim=True) - 1
        chosen = order.gather(1, torch.minimum(picks, last_kept)).squeeze(1)
        if self._any_greedy:
            chosen = torch.where(self._greedy_rows, logits.argmax(dim=-1), chosen)
        return chosen
