"""A fine-tune's starting weights: the parent checkpoint's, with embedding rows mapped by character."""

from __future__ import annotations

import torch

from chargpt.core.checkpoint import load_checkpoint
from chargpt.core.model import GPT
from chargpt.core.tokenizer import CharTokenizer
from chargpt.errors import CheckpointError, CheckpointNotFoundError, FailedPreconditionError
from trainer_service.training.api import InitSource

EMBEDDING = "wte.weight"  # (vocab, n_embd); the output head is the same tensor (weight tying)


def initialise_from_parent(model: GPT, source: InitSource, tokenizer: CharTokenizer) -> None:
    """Copy the parent's weights into `model`, whose vocabulary (`tokenizer`) is a superset of the parent's.

    The parent is verified first: it must still exist and its weights must hash to what the job was created
    with. Embedding rows move by character, never by index (adding a character shifts the sorted order); a
    character the parent never saw starts at the mean of the parent's rows; the tied output head follows.
    """
    try:
        parent = load_checkpoint(source.path)  # checks the weights against the parent's own manifest
    except CheckpointNotFoundError as exc:
        raise FailedPreconditionError(f"init_from: the parent checkpoint is gone ({exc})") from None
    except CheckpointError as exc:
        raise FailedPreconditionError(f"init_from: the parent checkpoint is damaged ({exc})") from None
    expected = source.lineage.weights_sha256
    if parent.manifest.weights.sha256 != expected:
        raise FailedPreconditionError(f"init_from: the parent checkpoint at {source.path} changed after the job "
                                      f"was created (weights sha256 {parent.manifest.weights.sha256[:16]}…, "
                                      f"expected {expected[:16]}…)")
    copy_by_character(model, parent.model, tokenizer, parent.tokenizer)


@torch.no_grad()
def copy_by_character(model: GPT, parent: GPT, tokenizer: CharTokenizer, parent_tokenizer: CharTokenizer) -> None:
    """Every weight from `parent`; the embedding's rows by character, new characters at the parent rows' mean."""
    target, source = model.state_dict(), parent.state_dict()
    for name, tensor in target.items():
        if name == EMBEDDING:
            tensor.copy_(embedding_by_character(source[name], tokenizer, parent_tokenizer))
        elif name != "lm_head.weight":  # tied to the embedding
            tensor.copy_(source[name])


def embedding_by_character(rows: torch.Tensor, tokenizer: CharTokenizer, parent_tokenizer: CharTokenizer
                           ) -> torch.Tensor:
    """(len(tokenizer.vocabulary), n_embd) rows: the parent's row of each character, or the mean row if new."""
    parent_index = {c: i for i, c in enumerate(parent_tokenizer.vocabulary)}
    mean = rows.mean(dim=0)  # (n_embd,)
    out = mean.expand(tokenizer.vocab_size, -1).clone()
    for i, char in enumerate(tokenizer.vocabulary):
        if char in parent_index:
            out[i] = rows[parent_index[char]]
    return out
