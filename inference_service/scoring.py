"""Perplexity with the standard strided sliding window, and attention-weight dumps (plain torch functions)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from chargpt.core.model import GPT


@dataclass
class ScoreResult:
    mean_nll: float
    num_tokens: int
    token_logprobs: list[float]

    @property
    def bits_per_char(self) -> float:
        return self.mean_nll / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.mean_nll, 700.0))  # exp overflows a double past ~709


def score_windows(num_ids: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) per window over the inputs ids[0:num_ids-1].

    Input position j predicts ids[j+1]. Window [begin, end) scores the predictions of positions
    [first_scored, end); consecutive windows advance `end` by `stride`, so every character is scored exactly once,
    with at least block_size - stride characters of context once the first window is full.
    """
    inputs = num_ids - 1
    windows, end_prev, end = [], 0, min(block_size, inputs)
    while True:
        windows.append((max(0, end - block_size), end, end_prev))
        if end >= inputs:
            return windows
        end_prev, end = end, min(end + stride, inputs)


@torch.inference_mode()
def score(model: GPT, ids: list[int], stride: int, windows_per_batch: int, want_logprobs: bool) -> ScoreResult:
    """Mean NLL of ids[1:] given what precedes each (up to the context window)."""
    device = next(model.parameters()).device
    tokens = torch.tensor(ids, dtype=torch.long, device=device)
    windows = score_windows(len(ids), model.config.block_size, stride)
    total, pieces = 0.0, []
    for first in range(0, len(windows), windows_per_batch):
        group = windows[first:first + windows_per_batch]
        size = group[0][1] - group[0][0]
        same_size = [w for w in group if w[1] - w[0] == size]
        for chunk in (same_size, [w for w in group if w[1] - w[0] != size]):
            if chunk:
                logprobs = _chunk_logprobs(model, tokens, chunk)
                total += float(logprobs.sum().double())
                if want_logprobs:
                    pieces.append(logprobs)
    n = len(ids) - 1
    values = torch.cat(pieces).float().tolist() if want_logprobs else []
    return ScoreResult(mean_nll=-total / n, num_tokens=n, token_logprobs=values)


def _chunk_logprobs(model: GPT, tokens: torch.Tensor, chunk: list[tuple[int, int, int]]) -> torch.Tensor:
    """Log-probabilities of the scored targets of equally long windows, in text order."""
    inputs = torch.stack([tokens[begin:end] for begin, end, _ in chunk])
    logits, _ = model(inputs)
    out = []
    for row, (begin, end, scored_from) in enumerate(chunk):
        picked = logits[row, scored_from - begin: end - begin].float()
        targets = tokens[scored_from + 1: end + 1]
        out.append(F.log_softmax(picked, dim=-1).gather(1, targets[:, None]).squeeze(1))
    return torch.cat(out)


@torch.inference_mode()
def attention(model: GPT, ids: list[int], layers: list[int], heads: list[int]) -> torch.Tensor:
    """Softmax attention weights [len(layers), len(heads), T, T] as float32 on the CPU."""
    device = next(model.parameters()).device
    _, weights = model.forward_with_attention(torch.tensor([ids], dtype=torch.long, device=device))
    head_index = torch.tensor(heads, device=device)
    selected = [weights[layer][0].index_select(0, head_index) for layer in layers]
    return torch.stack(selected).float().cpu()
