"""Tiny random-initialised chargpt checkpoints (fixed seeds) and chargpt's own greedy decoding, for parity tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from chargpt.core.checkpoint import Checkpoint, Lineage, TrainingInfo, load_checkpoint, save_checkpoint
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT, KVCache
from chargpt.core.tokenizer import CharTokenizer

# space, newline, tab, 2-, 3- and 4-byte characters, and "Ġ" itself (GPT-2's byte-level spelling of space)
VOCAB = "\t\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPRSTéü—€😀Ġ"
PROMPT = "To be, or not\tto bé —\n"
GREEDY_CHARS = 200


@dataclass
class TinyModel:
    path: Path
    checkpoint: Checkpoint

    @property
    def tokenizer(self) -> CharTokenizer:
        return self.checkpoint.tokenizer

    def logits(self, text: str) -> torch.Tensor:
        """chargpt's logits (T, V) for every position of text."""
        with torch.no_grad():
            logits, _ = self.checkpoint.model(torch.tensor([self.tokenizer.encode(text)]))
        return logits[0]

    def greedy(self, prompt: str, n: int = GREEDY_CHARS) -> str:
        """chargpt's greedy continuation, through its own KV cache (prefill, then one decode step a character)."""
        model, ids = self.checkpoint.model, self.tokenizer.encode(prompt)
        cache = KVCache(model.config, 1)
        logits = model.prefill(torch.tensor([ids]), torch.tensor([len(ids)]), cache)[:, -1]
        out: list[int] = []
        for _ in range(n):
            out.append(int(logits[0].argmax()))
            logits = model.decode_step(torch.tensor(out[-1:]), cache)
        return self.tokenizer.decode(out)


def write_tiny(path: Path, seed: int = 0, n_embd: int = 32, bias: bool = False, vocab: str = VOCAB) -> TinyModel:
    """A random model whose weights are wide enough (std 0.5) that its greedy text is not one repeated character."""
    torch.manual_seed(seed)
    tokenizer = CharTokenizer(sorted(vocab))
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=n_embd,
                         dropout=0.1, bias=bias)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
            elif bias:  # LayerNorm weights 1 +- 0.2, biases +- 0.2: a bias mapped to the wrong place shows
                p.add_(torch.randn_like(p) * 0.2)
    parent = Lineage(job_id="parentjob", kind="best", weights_sha256="ab" * 32, corpus_name="parents", step=40)
    training = TrainingInfo(job_id="job123", corpus_id="c0ffee", corpus_name="sonnets", corpus_sha256="cd" * 32,
                            step=7, train_loss=1.25, val_loss=1.5, parent=parent)
    save_checkpoint(path, model, tokenizer, training)
    return TinyModel(path, load_checkpoint(path))


@pytest.fixture(scope="package")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return write_tiny(tmp_path_factory.mktemp("tiny") / "checkpoint")
