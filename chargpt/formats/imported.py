"""A model read from another format (nanoGPT, Hugging Face), checked against chargpt's architecture (no torch)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chargpt.errors import InvalidArgumentError
from chargpt.formats.checkpoint_dir import Architecture, expected_shapes

MAX_VOCABULARY = 1_114_112  # every Unicode code point: chargpt's ModelConfig bound
# GPT-2's BPE vocabulary, and nanoGPT's padding of it to a multiple of 64: a checkpoint of that size is a BPE model.
GPT2_VOCAB_SIZES = (50257, 50304)


def not_a_character_model(vocab_size: int, field_name: str) -> InvalidArgumentError:
    return InvalidArgumentError(field_name, f"not a character model: {vocab_size} tokens is GPT-2's BPE vocabulary; "
                                "chargpt imports character-level models only (one token per character)")


@dataclass(frozen=True)
class ImportedModel:
    """Weights under chargpt's names (float32; bias tensors only when arch.bias), the vocabulary in id order, and
    what the source said about its training."""

    arch: Architecture
    vocabulary: str
    tensors: dict[str, np.ndarray] = field(repr=False)
    step: int = 0
    train_loss: float | None = None
    val_loss: float | None = None


def architecture(values: Mapping[str, Any], field_prefix: str) -> Architecture:
    """An Architecture from `values` (ModelConfig's field names), each field checked and named on error."""
    ints = {}
    for name in ("vocab_size", "block_size", "n_layer", "n_embd", "n_head"):
        value = values.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgumentError(f"{field_prefix}{name}", f"must be a positive integer (got {value!r})")
        ints[name] = value
    if ints["n_embd"] % ints["n_head"]:
        raise InvalidArgumentError(f"{field_prefix}n_head", f"{ints['n_head']} heads must divide n_embd "
                                   f"{ints['n_embd']}")
    if ints["vocab_size"] in GPT2_VOCAB_SIZES:
        raise not_a_character_model(ints["vocab_size"], f"{field_prefix}vocab_size")
    dropout, bias = values.get("dropout", 0.0), values.get("bias", True)
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise InvalidArgumentError(f"{field_prefix}dropout", f"must be in [0, 1) (got {dropout!r})")
    if not isinstance(bias, bool):
        raise InvalidArgumentError(f"{field_prefix}bias", f"must be true or false (got {bias!r})")
    return Architecture(dropout=float(dropout), bias=bias, **ints)


def checked_model(arch: Architecture, vocabulary: str, tensors: dict[str, np.ndarray], source: str,
                  **training: Any) -> ImportedModel:
    """The model, once the vocabulary fits the embedding and every tensor has chargpt's name and shape.

    `source` names the file the tensors came from, so every error names what to fix. A vocabulary in another order
    than chargpt's (sorted characters) has its embedding rows reordered with it (the head is tied, so the model is
    the same); positions beyond a block size shorter than the position table are cropped.
    """
    if not 0 < len(vocabulary) <= MAX_VOCABULARY or len(set(vocabulary)) != len(vocabulary):
        raise InvalidArgumentError("vocabulary", f"must be 1-{MAX_VOCABULARY} distinct characters "
                                   f"(got {len(vocabulary)}, {len(set(vocabulary))} distinct)")
    rows = tensors["wte.weight"].shape[0] if "wte.weight" in tensors else None
    if len(vocabulary) != arch.vocab_size or rows != arch.vocab_size:
        raise InvalidArgumentError("vocab_size", f"the vocabulary has {len(vocabulary)} characters, the model's "
                                   f"vocab_size is {arch.vocab_size} and its embedding ({source}) has {rows} rows: "
                                   "all three must agree")
    vocabulary, tensors = _in_chargpt_order(vocabulary, tensors)
    wpe = tensors.get("wpe.weight")
    if wpe is not None and wpe.ndim == 2 and wpe.shape[0] > arch.block_size:
        tensors = {**tensors, "wpe.weight": wpe[:arch.block_size]}
    _check_tensors(arch, tensors, source)
    weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    return ImportedModel(arch, vocabulary, weights, **training)


def _in_chargpt_order(vocabulary: str, tensors: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    """chargpt's ids are the characters in sorted order: reorder the (tied) embedding rows to match."""
    if sorted(vocabulary) == list(vocabulary):
        return vocabulary, tensors
    order = sorted(range(len(vocabulary)), key=vocabulary.__getitem__)
    return "".join(vocabulary[i] for i in order), {**tensors, "wte.weight": tensors["wte.weight"][order]}


def _check_tensors(arch: Architecture, tensors: dict[str, np.ndarray], source: str) -> None:
    expected = {k: v for k, v in expected_shapes(arch).items() if arch.bias or not k.endswith(".bias")}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise InvalidArgumentError(source, f"the weights do not match the architecture {arch}: missing "
                                   f"{missing[:5]}, unexpected {unexpected[:5]}")
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise InvalidArgumentError(f"{source}: {name}", f"has shape {tuple(tensors[name].shape)}, the "
                                       f"architecture needs {shape}")
        if not np.isfinite(tensors[name]).all():
            raise InvalidArgumentError(f"{source}: {name}", "holds NaN or infinite values")
