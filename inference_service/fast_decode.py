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
from typing import Literal, NamedTuple, cast

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


class _Layer(NamedTuple):
    """One block's parameters as plain tensors, read once: a lone row's step is short enough that looking them up
    through the modules every step (~150 nn.Module attribute reads) shows in its time."""

    ln_1: tuple[torch.Tensor, torch.Tensor | None]
    attn: tuple[torch.Tensor, torch.Tensor | None]
    proj: tuple[torch.Tensor, torch.Tensor | None]
    ln_2: tuple[torch.Tensor, torch.Tensor | None]
    fc: tuple[torch.Tensor, torch.Tensor | None]
    out: tuple[torch.Tensor, torch.Tensor | None]
    wide: tuple[torch.Tensor, torch.Tensor] | None  # (in, out) copies of attn's and fc's weights, for a lone row
    k: torch.Tensor  # this layer's cache (B_cache, nh, T, hs)
    v: torch.Tensor

    @staticmethod
    def of(block: Block, cache: KVCache, layer: int, transposed: bool) -> _Layer:
        def params(m: nn.Linear | nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor | None]:
            return m.weight.detach(), None if m.bias is None else m.bias.detach()
        attn, mlp = block.attn, block.mlp
        wide = ((attn.c_attn.weight.detach().t().contiguous(), mlp.c_fc.weight.detach().t().contiguous())
                if transposed else None)
        return _Layer(params(block.ln_1), params(attn.c_attn), params(attn.c_proj), params(block.ln_2),
                      params(mlp.c_fc), params(mlp.c_proj), wide, cache.k[layer], cache.v[layer])


class FastDecoder:
    """Decode one token per sequence for cache rows first_row..first_row+B-1 (by default 0..B-1)."""

    def __init__(self, model: GPT, cache: KVCache, attention: Attention = DEFAULT_ATTENTION,
                 lone_transposed: bool = False) -> None:
        """`lone_transposed`: keep (in, out) copies of each block's widening matrices (c_attn, c_fc) for a lone
        row's matrix-vector products (see the module doc; more memory, the calibration decides)."""
        self.model, self.cache = model, cache
        self.layers = [_Layer.of(cast(Block, b), cache, i, lone_transposed) for i, b in enumerate(model.blocks)]
        self.transposed = lone_transposed
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
        and values are written with plain slice copies instead of indexed writes (besides its matmuls, a lone
        stream's step is mostly such fixed costs). Its numbers are the batched path's unless lone_transposed.
        """
        model, cache = self.model, self.cache
        B = tokens.shape[0]
        if B == 1:
            x = model.wte.weight[tokens] + model.wpe.weight[attend_len - 1]  # (1, C)
            for layer in self.layers:
                x = self._lone_block(layer, x, attend_len, first_row)
            cache.lengths[first_row] = attend_len
        else:
            keys = self.keys[:attend_len]
            mask = torch.zeros(B, 1, 1, attend_len, dtype=cache.k.dtype, device=tokens.device)
            mask.masked_fill_(keys[None, None, None, :] > positions[:, None, None, None], float("-inf"))
            x = model.wte.weight[tokens] + model.wpe.weight[positions]  # (B, C)
            for layer in self.layers:
                x = self._block(layer, x, positions, mask, attend_len, first_row)
            cache.lengths[first_row:first_row + B] = positions + 1
        x = F.layer_norm(x, (self.n_embd,), model.ln_f.weight, model.ln_f.bias, self.eps)
        return F.linear(x, model.lm_head.weight)

    def _block(self, layer: _Layer, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
               attend_len: int, first_row: int) -> torch.Tensor:
        """One transformer block for rows x (B, C) at `positions`, keys and values written by index."""
        B, C, nh, hs = x.shape[0], self.n_embd, self.n_head, self.head_size
        end = first_row + B
        qkv = F.linear(F.layer_norm(x, (C,), *layer.ln_1, self.eps), *layer.attn).view(B, 3, nh, hs)
        rows = self.rows[first_row:end]
        layer.k[rows, :, positions] = qkv[:, 1].to(layer.k.dtype)
        layer.v[rows, :, positions] = qkv[:, 2].to(layer.v.dtype)
        q = qkv[:, 0, :, None, :].to(layer.k.dtype)  # (B, nh, 1, hs)
        y = self.attend(q, layer.k[first_row:end, :, :attend_len], layer.v[first_row:end, :, :attend_len],
                        mask, self.scale).to(x.dtype)
        return self._mlp(layer, x + F.linear(y.reshape(B, C), *layer.proj), None)

    def _lone_block(self, layer: _Layer, x: torch.Tensor, attend_len: int, row: int) -> torch.Tensor:
        """One transformer block for a lone row x (1, C) at position attend_len - 1: no mask, slice writes."""
        C, nh, hs, start = self.n_embd, self.n_head, self.head_size, attend_len - 1
        wide = layer.wide[0] if layer.wide is not None else None
        h = F.layer_norm(x, (C,), *layer.ln_1, self.eps)
        q, k, v = _linear(h, layer.attn, wide).view(3, nh, 1, hs)
        k_row, v_row = layer.k[row], layer.v[row]  # (nh, T, hs)
        k_row[:, start:attend_len].copy_(k)
        v_row[:, start:attend_len].copy_(v)
        y = self.attend(q.to(k_row.dtype)[None], k_row[None, :, :attend_len], v_row[None, :, :attend_len], None,
                        self.scale).to(x.dtype)
        return self._mlp(layer, x + F.linear(y.reshape(1, C), *layer.proj), layer.wide)

    def _mlp(self, layer: _Layer, x: torch.Tensor, wide: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        h = F.layer_norm(x, (self.n_embd,), *layer.ln_2, self.eps)
        return x + F.linear(F.gelu(_linear(h, layer.fc, wide[1] if wide is not None else None)), *layer.out)


def _linear(x: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor | None], transposed: torch.Tensor | None
            ) -> torch.Tensor:
    """linear(x) with (weight, bias), from the weight's (in, out) copy where one is given."""
    weight, bias = params
    if transposed is None:
        return F.linear(x, weight, bias)
    return torch.mm(x, transposed) if bias is None else torch.addmm(bias, x, transposed)


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
