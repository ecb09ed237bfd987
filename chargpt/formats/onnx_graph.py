"""ONNX export: a decoder with past_key_values inputs and present outputs, so a runtime decodes one character at a time.

Inputs: input_ids (batch, sequence) int64 and past_key_values.{i}.key / .value (batch, n_head, past, head_size) for
every layer i (past 0 at the start); outputs: logits (batch, sequence, vocab) and present.{i}.key / .value, the past
with this call's positions appended (the next call's past). The names are those of Hugging Face Optimum's exports.
Positions continue from the past's length, up to block_size in all.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from chargpt.core.checkpoint import load_checkpoint
from chargpt.core.model import GPT, Block
from chargpt.formats.checkpoint_dir import CharCheckpoint
from chargpt.formats.model_card import write_model_card

OPSET = 17
MODEL_FILE, METADATA_FILE = "model.onnx", "chargpt.json"


def cache_names(n_layer: int, prefix: str) -> list[str]:
    """past_key_values.0.key, past_key_values.0.value, ... (or present.0.key, ...)."""
    return [f"{prefix}.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]


class CachedDecoder(nn.Module):
    """chargpt's GPT over a key/value cache passed in and out as tensors (the model's own cache is a Python object,
    which a traced graph cannot hold)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        T, P = input_ids.shape[1], past[0].shape[2]
        positions = torch.arange(T, device=input_ids.device) + P
        x = m.wte(input_ids) + m.wpe(positions)
        # query at position P + t sees keys 0 .. P + t
        mask = torch.arange(P + T, device=input_ids.device)[None, :] <= positions[:, None]
        present: list[torch.Tensor] = []
        for i, block in enumerate(m.blocks):
            assert isinstance(block, Block)  # for mypy: nn.ModuleList yields Modules
            x, k, v = _block(block, x, past[2 * i], past[2 * i + 1], mask)
            present += [k, v]
        return (m.lm_head(m.ln_f(x)), *present)


def _block(block: Block, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, mask: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One transformer block with the past prepended to its keys and values (chargpt.core.model's maths)."""
    attn = block.attn
    B, T, _ = x.shape
    C = attn.n_embd  # a Python int: the traced shape's would be recorded as a tensor
    hs = C // attn.n_head
    q, k, v = attn.c_attn(block.ln_1(x)).split(C, dim=2)
    q, k, v = (t.view(B, T, attn.n_head, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(B, T, C)
    x = x + attn.c_proj(y)
    return x + block.mlp(block.ln_2(x)), k, v


def export_onnx(checkpoint: CharCheckpoint, out: Path) -> None:
    """Write model.onnx, chargpt.json (vocabulary and cache shapes, for chargpt.formats.onnx_decode) and README.md."""
    model = load_checkpoint(checkpoint.path).model.float().eval()
    a = checkpoint.arch
    past_names, present_names = cache_names(a.n_layer, "past_key_values"), cache_names(a.n_layer, "present")
    # trace with a past and several new positions, so neither length is baked in as a constant
    ids = torch.zeros((1, 2), dtype=torch.long)
    past = [torch.zeros((1, a.n_head, 1, a.head_size)) for _ in past_names]
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"},
            **{name: {0: "batch", 2: "past_sequence"} for name in past_names},
            **{name: {0: "batch", 2: "total_sequence"} for name in present_names}}
    # The TorchScript exporter (dynamo=False) records the sequence and past lengths as dynamic without needing
    # onnxscript; torch marks it deprecated, a warning the user cannot act on.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(CachedDecoder(model), (ids, *past), str(out / MODEL_FILE), dynamo=False,
                          input_names=["input_ids", *past_names], output_names=["logits", *present_names],
                          dynamic_axes=axes, opset_version=OPSET)
    metadata = {"vocabulary": checkpoint.vocabulary, "n_layer": a.n_layer, "n_head": a.n_head,
                "head_size": a.head_size, "block_size": a.block_size}
    (out / METADATA_FILE).write_text(json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    write_model_card(checkpoint, out / "README.md", "onnx")
