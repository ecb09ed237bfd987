"""Vectorised next-character sampling for a decode batch where every row has its own settings and seed.

Each request owns a `random.Random` seeded from its seed and draws exactly one uniform number per sampled
character; the batch is filtered (temperature, top-k, top-p) in one set of tensor ops and each row picks the
character whose cumulative probability first exceeds its number (inverse-CDF sampling). A request's draws
therefore never depend on which other requests share the batch, so a seed reproduces the same text alone or
batched, and the whole batch needs no per-row torch calls.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from chargpt.core.sampling import SamplingParams


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
        self._all_greedy = self._any_greedy = self._any_top_k = self._any_top_p = False

    def set_rows(self, rows: list[RowSampling]) -> None:
        self._rows = rows
        self._dirty = True

    def _rebuild(self, vocab: int) -> None:
        params = [r.params for r in self._rows]
        self._all_greedy = all(p.greedy for p in params)
        self._any_greedy = any(p.greedy for p in params)
        self._temperature = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params])[:, None]
        ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
        self._any_top_k = any(k < vocab for k in ks)
        self._top_k = torch.tensor(ks, dtype=torch.long)[:, None] - 1
        self._any_top_p = any(p.top_p < 1.0 for p in params)
        self._top_p = torch.tensor([p.top_p for p in params])[:, None]
        self._greedy_rows = torch.tensor([p.greedy for p in params])
        self._dirty = False

    def sample(self, logits: torch.Tensor) -> list[int]:
        """One character id per row of logits (B, V); rows are in the order given to set_rows."""
        if self._dirty:
            self._rebuild(logits.shape[-1])
        logits = logits.float().cpu()  # (B, V) is tiny; the token ids are needed on the host anyway
        if self._all_greedy:
            ids: list[int] = logits.argmax(dim=-1).tolist()
            return ids
        sorted_logits, order = torch.sort(logits / self._temperature, dim=-1, descending=True)
        if self._any_top_k:  # keep values >= the k-th largest (ties kept, as chargpt.core.sampling does)
            kth = sorted_logits.gather(1, self._top_k)
            sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
        probs = torch.softmax(sorted_logits, dim=-1)
        if self._any_top_p:  # drop a character once the mass before it reaches top_p; the first always stays
            mass_before = probs.cumsum(dim=-1) - probs
            probs = probs.masked_fill(mass_before >= self._top_p, 0.0)
        cdf = probs.cumsum(dim=-1)
        draws = torch.tensor([0.0 if r.params.greedy else r.rng.random() for r in self._rows])
        picks = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None], right=True).clamp_(max=cdf.shape[1] - 1)
        chosen = order.gather(1, picks).squeeze(1)
        if self._any_greedy:
            chosen = torch.where(self._greedy_rows, logits.argmax(dim=-1), chosen)
        result: list[int] = chosen.tolist()
        return result


class StopMatcher:
    """Finds stop sequences in streamed text, holding back any tail that could still become one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Text safe to release now, and the stop sequence that just completed (None if none did)."""
        if not self.stops:
            return text, None
        buffer = self.held + text
        matches = [(buffer.find(s), s) for s in self.stops if s in buffer]
        if matches:
            at, stop = min(matches)
            self.held = ""
            return buffer[:at], stop
        keep = self._longest_partial(buffer)
        self.held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[: len(buffer) - keep], None

    def _longest_partial(self, buffer: str) -> int:
        """Length of the longest suffix of buffer that is a proper prefix of some stop sequence."""
        for k in range(min(len(buffer), max(len(s) for s in self.stops) - 1), 0, -1):
            tail = buffer[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def flush(self) -> str:
        """Release whatever was held back (generation ended without completing a stop sequence)."""
        out, self.held = self.held, ""
        return out
