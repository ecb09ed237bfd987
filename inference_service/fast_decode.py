"""A lean decode step for the engine: GPT.decode_step's maths for rows 0..B-1, minus per-step Python overhead.

GPT.decode_step is general (any rows, any dtype path, module calls, dropout no-ops, a bool mask converted in
every layer). The engine always decodes cache rows 0..B-1 with positions it already knows, so this runner
calls the functional ops on the model's own weights directly, builds one additive mask per step and writes
the new keys and values with one indexed assignment per layer. The cache may be in a narrower dtype than the
model (e.g. bfloat16 keys and values for a float32 model): attention then runs in the cache's dtype, which halves
the memory traffic that dominates large-batch decoding. tests/inference_service/test_fast_decode.py
checks it against GPT.decode_step.
"""

from __future__ import annotations

from typing import cast

import torch
from torch.nn import functional as F

from chargpt.core.model import GPT, Block, KVCache


class FastDecoder:
    """Decode one token per sequence for cache rows 0..B-1."""

    def __init__(self, model: GPT, cache: KVCache) -> None:
        self.model, self.cache = model, cache
        config = model.config
        self.n_head, self.n_embd, self.head_size = config.n_head, config.n_embd, config.head_size
        self.eps = model.ln_f.eps
        device = cache.k.device
        self.rows = torch.arange(cache.batch_size, device=device)
        self.keys = torch.arange(cache.max_len, device=device)
        self.scale = 1.0 / self.head_size**0.5

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, attend_len: int) -> torch.Tensor:
        """tokens (B,) at positions (B,) (each row's current length); next-token logits (B, V).

        attend_len must be max(positions) + 1; the caller tracks lengths in Python, so no device sync is needed.
        """
        model, cache = self.model, self.cache
        B, C, nh, hs = tokens.shape[0], self.n_embd, self.n_head, self.head_size
        x = model.wte.weight[tokens] + model.wpe.weight[positions]  # (B, C)
        keys = self.keys[:attend_len]
        mask = torch.zeros(B, 1, 1, attend_len, dtype=cache.k.dtype, device=x.device)
        mask.masked_fill_(keys[None, None, None, :] > positions[:, None, None, None], float("-inf"))
        rows = self.rows[:B]
        for layer, module in enumerate(model.blocks):
            block = cast(Block, module)
            attn, mlp = block.attn, block.mlp
            h = F.layer_norm(x, (C,), block.ln_1.weight, block.ln_1.bias, self.eps)
            qkv = F.linear(h, attn.c_attn.weight, attn.c_attn.bias).view(B, 3, nh, hs)
            k_cache, v_cache = cache.k[layer], cache.v[layer]
            k_cache[rows, :, positions] = qkv[:, 1].to(k_cache.dtype)
            v_cache[rows, :, positions] = qkv[:, 2].to(v_cache.dtype)
            q = qkv[:, 0, :, None, :].to(k_cache.dtype)  # (B, nh, 1, hs)
            y = F.scaled_dot_product_attention(q, k_cache[:B, :, :attend_len], v_cache[:B, :, :attend_len],
                                               attn_mask=mask).to(x.dtype)
            x = x + F.linear(y.reshape(B, C), attn.c_proj.weight, attn.c_proj.bias)
            h = F.layer_norm(x, (C,), block.ln_2.weight, block.ln_2.bias, self.eps)
            x = x + F.linear(F.gelu(F.linear(h, mlp.c_fc.weight, mlp.c_fc.bias)), mlp.c_proj.weight,
                             mlp.c_proj.bias)
        x = F.layer_norm(x, (C,), model.ln_f.weight, model.ln_f.bias, self.eps)
        cache.lengths[:B] = positions + 1
        return F.linear(x, model.lm_head.weight)
