"""A chargpt model written as nanoGPT's train.py and prepare.py would write it: ckpt.pt (state dict under nanoGPT's
names, model_args, iter_num, best_val_loss, optimizer and config) and meta.pkl (vocab_size, itos, stoi)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from chargpt.core.model import GPT
from tests.formats.conftest import TinyModel


def nanogpt_state(model: GPT, compiled: bool = False, mask_buffers: bool = False) -> dict[str, torch.Tensor]:
    """chargpt's state dict under nanoGPT's names: transformer.h.N for blocks.N, the tied lm_head included; a
    compiled model's names start with _orig_mod., and nanoGPT without flash attention keeps attn.bias masks."""
    state = {}
    for name, value in model.state_dict().items():
        if name != "lm_head.weight":
            name = "transformer." + ("h." + name.removeprefix("blocks.") if name.startswith("blocks.") else name)
        state[name] = value.clone()
    if mask_buffers:
        size = model.config.block_size
        for i in range(model.config.n_layer):
            state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(size, size)).view(1, 1, size, size)
    return {("_orig_mod." if compiled else "") + k: v for k, v in state.items()}


def write_nanogpt(tiny: TinyModel, directory: Path, compiled: bool = False, mask_buffers: bool = False,
                  wpe_rows: int | None = None) -> tuple[Path, Path]:
    """ckpt.pt and meta.pkl in `directory`; wpe_rows > block_size leaves a position table longer than the context
    (model_args' block_size smaller than the table, as after editing model_args by hand)."""
    directory.mkdir(parents=True, exist_ok=True)
    model, config = tiny.checkpoint.model, tiny.checkpoint.model.config
    state = nanogpt_state(model, compiled, mask_buffers)
    if wpe_rows is not None:
        key = ("_orig_mod." if compiled else "") + "transformer.wpe.weight"
        state[key] = torch.cat([state[key], torch.randn(wpe_rows - config.block_size, config.n_embd)])
    model_args = dict(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                      block_size=config.block_size, bias=config.bias, vocab_size=config.vocab_size,
                      dropout=config.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3).state_dict()
    torch.save({"model": state, "optimizer": optimizer, "model_args": model_args, "iter_num": 5000,
                "best_val_loss": torch.tensor(1.4697), "config": {"dataset": "shakespeare_char", "compile": compiled}},
               directory / "ckpt.pt")
    vocabulary = tiny.tokenizer.vocabulary
    meta = {"vocab_size": len(vocabulary), "itos": dict(enumerate(vocabulary)),
            "stoi": {c: i for i, c in enumerate(vocabulary)}}
    (directory / "meta.pkl").write_bytes(pickle.dumps(meta))
    return directory / "ckpt.pt", directory / "meta.pkl"


class RunsCommand:
    """A hostile pickle payload: unpickling it would call os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (self.command,)
