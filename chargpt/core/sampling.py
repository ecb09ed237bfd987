"""Next-character sampling in torch: temperature (0 = greedy), top-k, top-p of SamplingParams; seeded generators."""

from __future__ import annotations

import torch

from chargpt.core.model import GPT
from chargpt.errors import NonFiniteLogitsError
from chargpt.sampling_params import SamplingParams


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A private random stream for one request, so concurrent requests never disturb each other."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed % (2**64))
    return gen


def non_finite_rows(logits: torch.Tensor) -> torch.Tensor:
    """Rows of logits (..., V) no character can be sampled from: any NaN, any +inf, or every entry -inf.

    A single -inf is a character of probability 0 (a masked one); +inf or NaN means the forward pass broke.
    """
    return torch.isnan(logits).any(dim=-1) | torch.isinf(logits.amax(dim=-1))


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log-weights (..., V) of the sampling distribution in float32: softmax of them is what is sampled.

    Temperature-scaled and shifted so the most likely character is at 0; everything outside top-k / top-p is
    -inf; greedy is a point mass (0 at the first argmax). Subtracting the maximum before dividing keeps every
    temperature finite: max_logit / 1e-38 alone overflows float32 to inf, and softmax of inf - inf is NaN. The
    shift and division run in float64: logits spanning more than float32's range (-3e38 to 3e38) would
    otherwise differ by -inf, which a huge temperature should have brought back into range.
    Top-k and top-p rank the raw logits (stable: equal logits by index), which the temperature cannot reorder.
    """
    logits = logits.float()
    if params.greedy:
        return torch.full_like(logits, float("-inf")).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 0.0)
    scaled = ((logits.double() - logits.amax(dim=-1, keepdim=True).double()) / params.temperature).float()
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
        probs = scaled.gather(-1, order).softmax(dim=-1)
        # Drop a character when the mass before it already reaches top_p; the most likely always stays.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from the logits (V,) of one sequence; NonFiniteLogitsError if they hold NaN or +inf."""
    if bool(non_finite_rows(logits)):
        raise NonFiniteLogitsError("the model produced non-finite logits (NaN or inf): no character can be sampled")
    if params.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(filter_logits(logits, params), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, params: SamplingParams,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The notebook's simple loop (full recompute, context cropped to block_size): a reference and a fallback.
    It applies temperature, top-k and top-p; the service's logits processors apply the penalties, bias and min-p."""
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block_size:])
        next_ids = [sample_next(logits[b, -1], params, generator) for b in range(idx.shape[0])]
        idx = torch.cat([idx, torch.tensor(next_ids, device=idx.device)[:, None]], dim=1)
    return idx
