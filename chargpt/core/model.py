"""The character-level GPT (nanoGPT architecture) with an attention-weights path and a batched KV cache."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from chargpt.core.config import ModelConfig
from chargpt.core.dropout import Dropout, keep_mask


class KVCache:
    """Keys and values of every layer for a batch of sequences of different lengths.

    Row b holds sequence b: positions [0, lengths[b]) are valid, the rest is scratch that masks hide.
    """

    def __init__(self, config: ModelConfig, batch_size: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, max_len: int | None = None) -> None:
        self.max_len = max_len or config.block_size
        shape = (config.n_layer, batch_size, config.n_head, self.max_len, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, T, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def copy_row(self, src: int, dst: int, length: int | None = None) -> None:
        """Move sequence `src` into row `dst` (used to keep active sequences contiguous). A caller that knows the
        sequence's `length` passes it: only its valid positions are copied, and no length is read from the device."""
        n = self.max_len if length is None else length
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = self.lengths[src] if length is None else length

    def remove_row(self, index: int, last: int, length: int) -> None:
        """Row `index`'s sequence is gone; the last row's (`length` positions) moves into it."""
        if index != last:
            self.copy_row(last, index, length)

    def clear_row(self, index: int) -> None:
        """Zero a row whose logits were not finite: its keys and values may be NaN, and the next sequence in it
        would read them past its own length (masked, but 0 * NaN is NaN in attention)."""
        self.k[:, index].zero_()
        self.v[:, index].zero_()

    def clear(self) -> None:
        self.lengths.zero_()


@dataclass
class _CacheWrite:
    """Where the current step's keys and values go in the cache, and how much of it to attend over."""

    cache: KVCache
    rows: torch.Tensor  # (B,) cache rows of the batch
    positions: torch.Tensor  # (B, T) position of each new token
    attend_len: int  # keys [0, attend_len) are read back

    def __post_init__(self) -> None:
        # Rows 0..B-1 in order let attention read a slice of the cache instead of gathering a copy.
        n = self.rows.numel()
        self.is_prefix = bool(torch.equal(self.rows, torch.arange(n, device=self.rows.device)))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        self.fast_dropout = False  # set by GPT.use_fast_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, layer: int,
                write: _CacheWrite | None = None, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if write is not None:
            k, v = self._update_cache(write, layer, k, v)
        dropout_p = self.dropout if self.training else 0.0
        if need_weights or (self.fast_dropout and dropout_p > 0):
            # SDPA on CPU takes its unfused path with dropout anyway: spelling it out lets the mask be fast.
            y, weights = _attention_with_weights(q, k, v, mask, dropout_p, self.training, self.fast_dropout)
        else:
            # mask None means plain causal attention over T keys (the training fast path).
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                               is_causal=mask is None)
            weights = None
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y)), weights

    @staticmethod
    def _update_cache(write: _CacheWrite, layer: int, k: torch.Tensor, v: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        k_cache, v_cache = write.cache.k[layer], write.cache.v[layer]  # (B_cache, nh, Tmax, hs)
        rows = write.rows[:, None].expand_as(write.positions)  # (B, T)
        # Advanced indices on dims 0 and 2 put (B, T) first: the values are (B, T, nh, hs).
        k_cache[rows, :, write.positions] = k.transpose(1, 2).to(k_cache.dtype)
        v_cache[rows, :, write.positions] = v.transpose(1, 2).to(v_cache.dtype)
        n = write.attend_len
        if write.is_prefix:
            b = write.rows.numel()
            return k_cache[:b, :, :n], v_cache[:b, :, :n]  # views: no copy on the decode hot path
        return k_cache[write.rows, :, :n], v_cache[write.rows, :, :n]


def _attention_with_weights(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                            dropout_p: float, training: bool, fast_dropout: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, so the softmax weights can be returned; same maths as the SDPA path."""
    B, nh, T, hs = q.shape
    S, scale = k.shape[-2], 1.0 / math.sqrt(hs)
    if mask is None:  # causal: one batched GEMM adds the scaled scores to a -inf-above-the-diagonal bias
        bias = torch.full((T, S), float("-inf"), device=q.device, dtype=q.dtype).triu(diagonal=S - T + 1)
        att = torch.baddbmm(bias, q.reshape(B * nh, T, hs), k.reshape(B * nh, S, hs).transpose(1, 2),
                            alpha=scale).view(B, nh, T, S)
    else:
        att = ((q * scale) @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf"))  # (B, nh, T, S)
    weights = F.softmax(att.float(), dim=-1).to(q.dtype)
    if fast_dropout and training and dropout_p > 0:
        keep, scale = keep_mask(weights.shape, dropout_p, weights.device, weights.dtype)
        return ((weights * keep) @ v).mul_(scale), weights  # scaling (B, nh, T, hs) beats scaling (.., T, S)
    dropped = F.dropout(weights, dropout_p, training) if dropout_p > 0 else weights
    return dropped @ v, weights


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))
        return out


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, layer: int,
                write: _CacheWrite | None = None, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attn(self.ln_1(x), mask, layer, write, need_weights)
        x = x + a
        return x + self.mlp(self.ln_2(x)), weights


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned position embeddings
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: the input embedding doubles as the output head
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def use_fast_dropout(self, enabled: bool = True) -> None:
        """Draw dropout masks with chargpt.core.dropout (several times faster on CPU; eager mode only)."""
        for module in self.modules():
            if isinstance(module, Dropout):
                module.fast = enabled
            elif isinstance(module, CausalSelfAttention):
                module.fast_dropout = enabled

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position (B, T, V), and the mean cross-entropy if targets are given."""
        logits, _ = self._run(idx, torch.arange(idx.shape[1], device=idx.device), mask=None)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    def forward_with_attention(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the softmax attention weights of every layer, each (B, nh, T, T)."""
        logits, weights = self._run(idx, torch.arange(idx.shape[1], device=idx.device), mask=None,
                                    need_weights=True)
        return logits, weights

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor, lengths: torch.Tensor, cache: KVCache,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """Run right-padded prompts (B, T) of the given lengths into cache rows; logits (B, T, V).

        Positions at or past a prompt's length produce junk logits that callers ignore.
        """
        B, T = idx.shape
        rows = torch.arange(B, device=idx.device) if rows is None else rows
        pos = torch.arange(T, device=idx.device)
        # Causal, and no key past the prompt's own length (the padding).
        mask = (pos[None, :] <= pos[:, None])[None] & (pos[None, None, :] < lengths[:, None, None])
        write = _CacheWrite(cache, rows, pos.expand(B, T), attend_len=T)
        logits, _ = self._run(idx, pos, mask[:, None], write=write)
        cache.lengths[rows] = lengths
        return logits

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, cache: KVCache, rows: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Append one token per sequence (B,) at each row's current length; next-token logits (B, V)."""
        B = tokens.shape[0]
        rows = torch.arange(B, device=tokens.device) if rows is None else rows
        positions = cache.lengths[rows]  # (B,)
        if int(positions.max()) >= cache.max_len:
            raise ValueError(f"a sequence is full: the cache holds {cache.max_len} positions")
        attend_len = int(positions.max()) + 1
        keys = torch.arange(attend_len, device=tokens.device)
        mask = (keys[None, :] <= positions[:, None])[:, None, None, :]  # (B, 1, 1, S)
        write = _CacheWrite(cache, rows, positions[:, None], attend_len)
        logits, _ = self._run(tokens[:, None], positions[:, None], mask, write=write)
        cache.lengths[rows] = positions + 1
        return logits[:, -1]

    def _run(self, idx: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None,
             write: _CacheWrite | None = None, need_weights: bool = False
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence of {idx.shape[1]} exceeds block_size {self.config.block_size}")
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        weights: list[torch.Tensor] = []
        for layer, block in enumerate(self.blocks):
            x, w = block(x, mask, layer, write, need_weights)
            if w is not None:
                weights.append(w)
        return self.lm_head(self.ln_f(x)), weights
