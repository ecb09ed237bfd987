"""Runs a scheduled step on the model: the newcomers' prefill, the window slides, and the one-character decode.

When a sequence fills the context window (block_size positions), its cache row is rebuilt from its last
`keep = block_size - slide` characters (positions 0..keep-1; slide defaults to block_size // 4) and decoding
goes on from there, so every character is predicted from between keep+1 and block_size characters of context.
The notebook crops to the last block_size characters at every step, which needs a full forward pass per
character; the sliding re-prefill costs one prefill per `slide` characters instead, and matches the notebook
exactly until the window first fills. slide = 1 reproduces the notebook exactly, at the notebook's cost.
"""

from __future__ import annotations

import torch

from chargpt.core.model import GPT, KVCache
from inference_service.decode_policy import DecodePolicy
from inference_service.engine.ggml_runner import window_keep
from inference_service.engine.outputs import ModelRunnerOutput, SchedulerOutput
from inference_service.engine.request import GenRequest
from inference_service.fast_decode import Attention, FastDecoder, RowGroups


class ModelRunner:
    """One model's weights (and, for small batches, a float32 copy), decoding into a shared KV cache."""

    def __init__(self, model: GPT, cache: KVCache, policy: DecodePolicy, attention: Attention,
                 window_slide: int = 0, float32_model: GPT | None = None) -> None:
        """`float32_model`: a float32 copy of a narrower `model`, for batches below policy.narrow_from."""
        self.model, self.cache, self.policy = model, cache, policy
        self.device = cache.k.device
        self.keep = window_keep(model.config.block_size, window_slide)
        lone = policy.lone_transposed  # measured for float32 weights only
        self.decoder = FastDecoder(model, cache, attention, lone and model.wte.weight.dtype == torch.float32)
        self.float32_decoder = (FastDecoder(float32_model, cache, attention, lone) if float32_model is not None
                                else self.decoder)
        groups = policy.groups_for(cache.batch_size)
        self.row_groups = RowGroups(groups) if groups > 1 and self.device.type == "cpu" else None

    def execute(self, scheduled: SchedulerOutput) -> ModelRunnerOutput:
        """The step's logits: the decode rows' next characters, then the newcomers' first."""
        prefilled = [self._prefill_newcomers(scheduled.prefill, len(scheduled.decode))] if scheduled.prefill else []
        decoded = [self._decode(scheduled.decode, scheduled.slides)] if scheduled.decode else []
        logits = [*decoded, *prefilled]
        return ModelRunnerOutput(logits[0] if len(logits) == 1 else torch.cat(logits))  # cat: only as rows join

    def _prefill_newcomers(self, newcomers: list[GenRequest], first_row: int) -> torch.Tensor:
        """Prefill prompts into rows first_row.. (on every thread: the decode policy's count is for one-token
        steps); the logits (n, V) at each prompt's last position."""
        self.policy.apply(self.policy.max_threads)
        n = len(newcomers)
        lengths = [len(r.prompt_ids) for r in newcomers]
        padded = torch.zeros(n, max(lengths), dtype=torch.long)
        for i, request in enumerate(newcomers):
            padded[i, : lengths[i]] = torch.tensor(request.prompt_ids)
        length_t = torch.tensor(lengths)
        rows = torch.arange(first_row, first_row + n)
        logits = self._prefill(padded.to(self.device), length_t.to(self.device), rows.to(self.device))
        return logits[torch.arange(n, device=self.device), (length_t - 1).to(self.device)]

    def _decode(self, rows: list[GenRequest], slides: list[int]) -> torch.Tensor:
        """One character's logits (B, V) for rows 0..B-1, each from its last generated character."""
        for index in slides:
            self._slide(index, rows[index])
        batch = len(rows)
        self.policy.apply(self.policy.threads_for(batch))
        tokens = torch.tensor([r.history[-1] for r in rows], device=self.device)
        lengths = [r.cache_len for r in rows]
        decoder = self.decoder if self.policy.narrow_for(batch) else self.float32_decoder
        if self.row_groups is not None and self.policy.groups_for(batch) > 1:
            logits = self.row_groups.step(decoder, tokens, lengths)
        else:
            logits = decoder.step(tokens, torch.tensor(lengths, device=self.device), max(lengths) + 1)
        for request in rows:
            request.cache_len += 1
        return logits

    def _slide(self, index: int, request: GenRequest) -> None:
        """Rebuild a full row from the last `keep` characters before the pending one (see module doc)."""
        if self.keep:
            context = torch.tensor([request.history[-(self.keep + 1):-1]], device=self.device)
            self._prefill(context, torch.tensor([self.keep], device=self.device),
                          torch.tensor([index], device=self.device))
        else:
            self.cache.lengths[index] = 0
        request.cache_len = self.keep

    def _prefill(self, idx: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """GPT.prefill into cache rows; through a scratch cache in the model's dtype if the cache's differs."""
        if self.cache.k.dtype == self.model.wte.weight.dtype:
            return self.model.prefill(idx, lengths, self.cache, rows)
        n, T = idx.shape
        scratch = KVCache(self.model.config, n, device=self.device, dtype=self.model.wte.weight.dtype, max_len=T)
        logits = self.model.prefill(idx, lengths, scratch)
        self.cache.k[:, rows, :, :T] = scratch.k.to(self.cache.k.dtype)
        self.cache.v[:, rows, :, :T] = scratch.v.to(self.cache.v.dtype)
        self.cache.lengths[rows] = lengths
        return logits

    def load(self, requests: list[GenRequest]) -> None:
        """Take over running sequences from another runner: rows 0.. rebuilt from their histories."""
        self.clear()
        held = [(i, r) for i, r in enumerate(requests) if r.cache_len]
        if not held:
            return
        self.policy.apply(self.policy.max_threads)
        lengths = [r.cache_len for _, r in held]
        padded = torch.zeros(len(held), max(lengths), dtype=torch.long)
        for k, (_, request) in enumerate(held):
            padded[k, : lengths[k]] = torch.tensor(request.history[-(lengths[k] + 1):-1])
        rows = torch.tensor([i for i, _ in held])
        self._prefill(padded.to(self.device), torch.tensor(lengths).to(self.device), rows.to(self.device))

    # ---- rows (the scheduler keeps running sequences in rows 0..B-1): the KV cache's ----

    def remove_row(self, index: int, last: int, length: int) -> None:
        self.cache.remove_row(index, last, length)

    def clear_row(self, index: int) -> None:
        self.cache.clear_row(index)

    def clear(self) -> None:
        self.cache.clear()

    def close(self) -> None:
        if self.row_groups is not None:
            self.row_groups.close()
