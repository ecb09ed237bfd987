"""Log-probabilities of generated characters from the model's raw distribution (log_softmax of the logits)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """A generated character, its log-probability and the most likely characters at that step."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def batch_logprobs(logits: torch.Tensor, chosen: list[int | None], wanted: list[int],
                   vocabulary: str) -> list[TokenLogprob | None]:
    """For each row of raw logits (B, V) whose `wanted` count is > 0: the chosen character's entry; else None.

    Raw means before penalties, bias, temperature and filtering, as vLLM and OpenAI report them. A row whose
    choice is None (its logits were not finite) gets None. Columns past the vocabulary (a constrained batch's
    end option) count in the normalisation but are never listed; nor are characters of probability 0."""
    out: list[TokenLogprob | None] = [None] * len(chosen)
    picks = {i: c for i, (c, n) in enumerate(zip(chosen, wanted, strict=True)) if n > 0 and c is not None}
    rows = list(picks)
    if not rows:
        return out
    index = torch.tensor(rows, device=logits.device)
    logp = torch.log_softmax(logits.index_select(0, index).float(), dim=-1).cpu()  # (R, V)
    k = min(max(wanted[i] for i in rows), len(vocabulary))
    # (R, k), most likely first; ties keep the lower id first
    top_values, top_ids = logp[:, :len(vocabulary)].topk(k, dim=-1)
    picked = logp.gather(1, torch.tensor([[picks[i]] for i in rows])).squeeze(1).tolist()
    values, ids = top_values.tolist(), top_ids.tolist()
    for r, i in enumerate(rows):
        n = min(wanted[i], k)
        top = tuple((vocabulary[t], v) for t, v in zip(ids[r][:n], values[r][:n], strict=True) if v > -math.inf)
        out[i] = TokenLogprob(vocabulary[picks[i]], picked[r], top)
    return out
