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


@dataclass(frozen=True)
class ScoreJob:
    """One text to score: its token ids, the window stride, and whether to return per-character values."""

    ids: list[int]
    stride: int
    want_logprobs: bool = False


Window = tuple[int, tuple[int, int, int]]  # (job index, (begin, end, first_scored))


@torch.inference_mode()
def score_many(model: GPT, jobs: list[ScoreJob], tokens_per_pass: int) -> list[ScoreResult]:
    """Mean NLL of each job's ids[1:] given what precedes each (up to the context window).

    The texts' windows share forward passes of at most tokens_per_pass tokens (at least one window each).

    Windows are right-padded to the longest in their pass; causal attention keeps padding out of every real
    position, and padded positions are never read.
    """
    block = model.config.block_size
    tokens = [torch.tensor(job.ids, dtype=torch.long) for job in jobs]
    windows: list[Window] = [(j, w) for j, job in enumerate(jobs) for w in score_windows(len(job.ids), block,
                                                                                        job.stride)]
    windows.sort(key=lambda jw: jw[1][1] - jw[1][0], reverse=True)  # stable: text order among equal lengths
    totals = [0.0] * len(jobs)
    pieces: list[list[tuple[int, torch.Tensor]]] = [[] for _ in jobs]
    for chunk in _passes(windows, tokens_per_pass):
        logprobs = _pass_logprobs(model, tokens, chunk)
        sums = torch.stack([lp.sum() for lp in logprobs]).double().cpu().tolist()
        for (j, (_, _, first)), lp, total in zip(chunk, logprobs, sums, strict=True):
            totals[j] += total
            if jobs[j].want_logprobs:
                pieces[j].append((first, lp))
    results = []
    for j, job in enumerate(jobs):
        ordered = [lp for _, lp in sorted(pieces[j], key=lambda piece: piece[0])]
        values = torch.cat(ordered).float().tolist() if ordered else []
        n = len(job.ids) - 1
        results.append(ScoreResult(mean_nll=-totals[j] / n, num_tokens=n, token_logprobs=values))
    return results


def _passes(windows: list[Window], tokens_per_pass: int) -> list[list[Window]]:
    """Consecutive runs of the (longest-first) windows whose padded size fits tokens_per_pass (at least one)."""
    passes: list[list[Window]] = []
    for window in windows:
        if passes and (len(passes[-1]) + 1) * _length(passes[-1][0]) <= tokens_per_pass:
            passes[-1].append(window)
        else:
            passes.append([window])
    return passes


def _length(window: Window) -> int:
    begin, end, _ = window[1]
    return end - begin


def _pass_logprobs(model: GPT, tokens: list[torch.Tensor], chunk: list[Window]) -> list[torch.Tensor]:
    """Log-probabilities of each window's scored targets, from one forward pass over the padded windows."""
    device = next(model.parameters()).device
    width = _length(chunk[0])
    inputs = torch.zeros(len(chunk), width, dtype=torch.long)
    targets = torch.zeros(len(chunk), width, dtype=torch.long)
    for row, (j, (begin, end, _)) in enumerate(chunk):
        inputs[row, : end - begin] = tokens[j][begin:end]
        targets[row, : end - begin] = tokens[j][begin + 1: end + 1]
    logits, _ = model(inputs.to(device))
    picked = F.log_softmax(logits.float(), dim=-1).gather(2, targets.to(device)[..., None]).squeeze(2)  # (B, T)
    return [picked[row, first - begin: end - begin] for row, (_, (begin, end, first)) in enumerate(chunk)]


@torch.inference_mode()
def attention(model: GPT, ids: list[int], layers: list[int], heads: list[int]) -> torch.Tensor:
    """Softmax attention weights [len(layers), len(heads), T, T] as float32 on the CPU."""
    device = next(model.parameters()).device
    _, weights = model.forward_with_attention(torch.tensor([ids], dtype=torch.long, device=device))
    head_index = torch.tensor(heads, device=device)
    selected = [weights[layer][0].index_select(0, head_index) for layer in layers]
    return torch.stack(selected).float().cpu()
