"""A lean decode step for the engine: GPT.decode_step's maths for rows 0..B-1, minus per-step Python overhead.

GPT.decode_step is general (any rows, any dtype path, module calls, dropout no-ops, a bool mask converted in
every layer). The engine always decodes cache rows 0..B-1 with positions it already knows, so this runner
calls the functional ops on the model's own weights directly, builds one additive mask per step and writes
the new keys and values with one indexed assignment per layer (a lone row: no mask, and slice copies). The
cache may be in a narrower dtype than the model (e.g. bfloat16 keys and values for a float32 model): attention
then runs in the cache's dtype, which halves the memory traffic that dominates large-batch decoding.
tests/inference_service/test_fast_decode.py checks it against GPT.decode_step.

Attention over the cache has two implementations with the same maths: torch's scaled_dot_product_attention
("sdpa") and a written-out one ("matmul": one baddbmm for the scaled, masked scores, a softmax, one bmm). For a
single query per sequence the CPU SDPA kernel reads the cache slowly; bench/decode_attention.py compares both
in one run, and DEFAULT_ATTENTION is what it measured faster (see inference_service/README.md).

A lone row's matrix products are matrix-vector products, bound by reading the weights (42 MB per character for
the notebook-size model), and torch's kernel for x @ W.T reads a widening W (out > in) slowly: on the AVX2 host of
issue 25, (in, out) copies of c_attn and c_fc, multiplied as x @ W_t, made a float32 step 1.25x faster
(bench/results/decode-profile-20261207.md). `lone_transposed` keeps such copies (about 60% more weight memory;
the numbers differ from the plain step by float rounding, ~1e-6) and the calibration turns it on where it measures
faster.

RowGroups decodes a batch as several contiguous row groups at once, each on its own Python thread running torch
with one thread (data parallelism within the batch, instead of torch's per-op intra-op parallelism). On the 2-core
hosts of issue 13, torch's two threads meet at a fork/join in every one of a step's ~100 ops, and bf16 kernels
scale poorly across them; two independent halves ran a 64-row bf16 step 1.26x faster and a 256-row one 1.48x
(float32: no gain). Whether it pays is measured per host (calibration.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from typing import Literal, cast

import torch
from torch import nn
from torch.nn import functional as F

from chargpt.core.device import set_torch_threads
from chargpt.core.model import GPT, Block, KVCache

Attention = Literal["sdpa", "matmul"]
DEFAULT_ATTENTION: Attention = "sdpa"  # bench/decode_attention.py: SDPA was faster on this host (README)


def attend_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
                ) -> torch.Tensor:
    """q (B, nh, 1, hs) over k, v (B, nh, S, hs) with an additive mask (B, 1, 1, S), or None where every key
    is valid: (B, nh, 1, hs)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def attend_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
                  ) -> torch.Tensor:
    """attend_sdpa's maths written out; the softmax runs in float32 whatever the cache's dtype."""
    B, nh, S, hs = k.shape
    bias = q.new_zeros(B, 1, 1, S, dtype=k.dtype) if mask is None else mask
    # (B, nh) merge into one batch dim without a copy: the cache slice is contiguous across them.
    scores = torch.baddbmm(bias.expand(B, nh, 1, S).reshape(B * nh, 1, S), q.reshape(B * nh, 1, hs),
                           k.reshape(B * nh, S, hs).transpose(1, 2), alpha=scale)  # (B*nh, 1, S)
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.bmm(weights, v.reshape(B * nh, S, hs)).view(B, nh, 1, hs)


ATTENTION = {"sdpa": attend_sdpa, "matmul": attend_matmul}


class FastDecoder:
    """Decode one token per sequence for cache rows first_row..first_row+B-1 (by default 0..B-1)."""

    def __init__(self, model: GPT, cache: KVCache, attention: Attention = DEFAULT_ATTENTION,
                 lone_transposed: bool = False) -> None:
        """`lone_transposed`: keep (in, out) copies of each block's widening matrices (c_attn, c_fc) for a lone
        row's matrix-vector products (see the module doc; more memory, the calibration decides)."""
        self.model, self.cache = model, cache
        blocks = [cast(Block, b) for b in model.blocks]
        self.transposed: list[tuple[torch.Tensor, torch.Tensor]] | None = (
            [(b.attn.c_attn.weight.detach().t().contiguous(), b.mlp.c_fc.weight.detach().t().contiguous())
             for b in blocks]
            if lone_transposed else None)
        self.attend = ATTENTION[attention]
        config = model.config
        self.n_head, self.n_embd, self.head_size = config.n_head, config.n_embd, config.head_size
        self.eps = model.ln_f.eps
        device = cache.k.device
        self.rows = torch.arange(cache.batch_size, device=device)
        self.keys = torch.arange(cache.max_len, device=device)
        self.scale = 1.0 / self.head_size**0.5

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, attend_len: int, first_row: int = 0
             ) -> torch.Tensor:
        """tokens (B,) at positions (B,) (each row's current length) in cache rows first_row..first_row+B-1;
        next-token logits (B, V).

        attend_len must be max(positions) + 1; the caller tracks lengths in Python, so no device sync is needed.
        A lone row (B = 1) sits at attend_len - 1 and attends to every key it has: it needs no mask, and its keys
        and values are written with plain slice copies instead of indexed writes (a lone stream's step is mostly
        such fixed costs besides its matmuls; the numbers are the same).
        """
        model, cache = self.model, self.cache
        B = tokens.shape[0]
        where: torch.Tensor | int = attend_len - 1 if B == 1 else positions
        mask = None
        if B > 1:
            keys = self.keys[:attend_len]
            mask = torch.zeros(B, 1, 1, attend_len, dtype=cache.k.dtype, device=tokens.device)
            mask.masked_fill_(keys[None, None, None, :] > positions[:, None, None, None], float("-inf"))
        x = model.wte.weight[tokens] + model.wpe.weight[where]  # (B, C)
        for layer, module in enumerate(model.blocks):
            x = self._block(cast(Block, module), layer, x, where, mask, attend_len, first_row)
        x = F.layer_norm(x, (self.n_embd,), model.ln_f.weight, model.ln_f.bias, self.eps)
        cache.lengths[first_row:first_row + B] = where + 1
        return F.linear(x, model.lm_head.weight)

    def _block(self, block: Block, layer: int, x: torch.Tensor, where: torch.Tensor | int, mask: torch.Tensor | None,
               attend_len: int, first_row: int) -> torch.Tensor:
        """One transformer block for x (B, C): its keys and values go into the cache at `where` (each row's
        position, or the lone row's as an int)."""
        B, C, nh, hs = x.shape[0], self.n_embd, self.n_head, self.head_size
        end = first_row + B
        attn, mlp = block.attn, block.mlp
        h = F.layer_norm(x, (C,), block.ln_1.weight, block.ln_1.bias, self.eps)
        wide = self.transposed[layer] if self.transposed is not None and B == 1 else (None, None)
        qkv = _linear(h, attn.c_attn, wide[0]).view(B, 3, nh, hs)
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]
        if isinstance(where, int):
            k_cache[first_row, :, where].copy_(qkv[0, 1])
            v_cache[first_row, :, where].copy_(qkv[0, 2])
        else:
            rows = self.rows[first_row:end]
            k_cache[rows, :, where] = qkv[:, 1].to(k_cache.dtype)
            v_cache[rows, :, where] = qkv[:, 2].to(v_cache.dtype)
        q = qkv[:, 0, :, None, :].to(k_cache.dtype)  # (B, nh, 1, hs)
        y = self.attend(q, k_cache[first_row:end, :, :attend_len], v_cache[first_row:end, :, :attend_len],
                        mask, self.scale).to(x.dtype)
        x = x + F.linear(y.reshape(B, C), attn.c_proj.weight, attn.c_proj.bias)
        h = F.layer_norm(x, (C,), block.ln_2.weight, block.ln_2.bias, self.eps)
        return x + F.linear(F.gelu(_linear(h, mlp.c_fc, wide[1])), mlp.c_proj.weight, mlp.c_proj.bias)


def _linear(x: torch.Tensor, linear: nn.Linear, transposed: torch.Tensor | None) -> torch.Tensor:
    """linear(x), from its (in, out) copy where one is given."""
    if transposed is None:
        return F.linear(x, linear.weight, linear.bias)
    return torch.mm(x, transposed) if linear.bias is None else torch.addmm(linear.bias, x, transposed)


class RowGroups:
    """Decode steps split into `groups` contiguous row groups run at once: group 0 on the calling thread, the
    others on worker threads. torch's thread count belongs to each OS thread: the workers set theirs to one when
    they start, and the caller sets its own to one before a step."""

    def __init__(self, groups: int) -> None:
        if groups < 2:
            raise ValueError(f"row groups need at least 2 groups (got {groups})")
        self.groups = groups
        self._pool = ThreadPoolExecutor(groups - 1, thread_name_prefix="decode-group",
                                        initializer=set_torch_threads, initargs=(1,))

    def step(self, decoder: FastDecoder, tokens: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """decoder.step over rows 0..B-1 (B = len(lengths) >= groups), each group attending only as far as its own
        longest row; logits (B, V) in row order."""
        B = len(lengths)
        bounds = [B * g // self.groups for g in range(self.groups + 1)]
        positions = torch.tensor(lengths, device=tokens.device)

        def run(g: int) -> torch.Tensor:
            lo, hi = bounds[g], bounds[g + 1]
            return decoder.step(tokens[lo:hi], positions[lo:hi], max(lengths[lo:hi]) + 1, first_row=lo)

        others = [self._pool.submit(run, g) for g in range(1, self.groups)]
        try:
            first = run(0)
        finally:
            wait(others)  # whatever failed, no group may still be writing the cache when this returns or raises
        return torch.cat([first, *(future.result() for future in others)])

    def close(self) -> None:
        self._pool.shutdown(wait=True)
