"""A torch-free reader of a chargpt checkpoint directory (manifest.json + model.safetensors) into numpy arrays."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from chargpt.errors import CheckpointCorruptError, CheckpointFormatError, CheckpointNotFoundError

# The checkpoint format's torch-free constants; chargpt/core/checkpoint.py writes with them.
FORMAT_NAME, FORMAT_VERSION = "chargpt-checkpoint", 1
MANIFEST_FILE = "manifest.json"
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which chargpt's model uses
# The end-of-text token that runtimes want (llama.cpp, CTranslate2) and chargpt does not have: an export appends it
# after the characters (id vocab_size) with a zero embedding row, so that through the tied head its logit is exactly 0
# and the characters' logits are the chargpt model's. Runtimes that can suppress a token get told to suppress it.
END_OF_TEXT = "<|endoftext|>"


@dataclass(frozen=True)
class Architecture:
    """The model half of the manifest that a converter needs (chargpt.core.config.ModelConfig's fields)."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_embd: int
    n_head: int
    dropout: float
    bias: bool

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class CharCheckpoint:
    """A checkpoint's weights (float32 numpy, biases filled with zeros when the model has none), vocabulary and
    manifest, read without torch."""

    path: Path
    arch: Architecture
    vocabulary: str
    manifest: dict[str, Any]
    weights_sha256: str
    tensors: dict[str, np.ndarray] = field(repr=False)

    @property
    def training(self) -> dict[str, Any]:
        info: dict[str, Any] = self.manifest.get("training") or {}
        return info

    def embedding_with_end_of_text(self) -> np.ndarray:
        """wte with a zero row appended for END_OF_TEXT: (vocab_size + 1, n_embd)."""
        return np.concatenate([self.tensors["wte.weight"], np.zeros((1, self.arch.n_embd), np.float32)])

    def layer(self, i: int, name: str) -> np.ndarray:
        """Tensor `name` (e.g. "attn.c_attn.weight") of block i."""
        return self.tensors[f"blocks.{i}.{name}"]


def read_checkpoint(path: str | os.PathLike[str]) -> CharCheckpoint:
    """Read and verify a checkpoint directory (or its `.old` twin left by an interrupted writer)."""
    directory = resolve_checkpoint_dir(path)
    manifest = read_manifest_json(directory)
    arch = _architecture(manifest, directory)
    vocabulary = manifest.get("vocabulary")
    if not isinstance(vocabulary, str) or len(vocabulary) != arch.vocab_size:
        raise CheckpointFormatError(f"manifest 'vocabulary' in {directory} must be a string of model.vocab_size "
                                    f"({arch.vocab_size}) characters")
    weights = manifest.get("weights") or {}
    weights_path, sha256 = verified_weights(directory, str(weights.get("file", "model.safetensors")),
                                            str(weights.get("sha256")))
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types for truncated headers
        raise CheckpointCorruptError(f"cannot read {weights_path}: {exc}") from None
    tensors = _with_zero_biases({k: v.astype(np.float32) for k, v in tensors.items()}, arch)
    _check_shapes(tensors, arch, directory)
    return CharCheckpoint(directory, arch, vocabulary, manifest, sha256, tensors)


def checkpoint_in_memory(arch: Architecture, vocabulary: str, tensors: dict[str, np.ndarray]) -> CharCheckpoint:
    """Weights already in memory (a loaded model's) as a CharCheckpoint, for a runtime that reads an export."""
    where = Path("<memory>")
    tensors = _with_zero_biases({k: v.astype(np.float32) for k, v in tensors.items()}, arch)
    _check_shapes(tensors, arch, where)
    return CharCheckpoint(where, arch, vocabulary, {}, "", tensors)


def resolve_checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    """The directory to read: path itself, or its `.old` twin if a writer was interrupted mid-swap."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    if not path.exists():
        raise CheckpointNotFoundError(f"no checkpoint at {path}")
    raise CheckpointNotFoundError(f"{path} is not a chargpt checkpoint directory: it has no {MANIFEST_FILE}")


def verified_weights(directory: Path, file: str, sha256: str) -> tuple[Path, str]:
    """The weights file the manifest names (a plain name inside `directory`) and its sha256, which must be the
    manifest's."""
    path = directory / file
    if path.parent != directory or not path.is_file():
        raise CheckpointNotFoundError(f"weights file {file!r} missing in {directory}")
    with open(path, "rb") as f:
        actual = hashlib.file_digest(f, "sha256").hexdigest()
    if actual != sha256:
        raise CheckpointCorruptError(f"weights sha256 mismatch in {directory}: the manifest says {sha256[:16]}…, "
                                     f"the file is {actual[:16]}…")
    return path, actual


def read_manifest_json(directory: Path) -> dict[str, Any]:
    """manifest.json as JSON, checked to be this format and version (its fields are the reader's to check)."""
    try:
        raw = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"{directory / MANIFEST_FILE} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise CheckpointFormatError(f"{directory} is not a {FORMAT_NAME} (manifest 'format' field)")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointFormatError(f"unknown checkpoint format_version {raw.get('format_version')!r}; "
                                    f"this chargpt reads version {FORMAT_VERSION}")
    return raw


def _architecture(manifest: dict[str, Any], directory: Path) -> Architecture:
    model = manifest.get("model")
    try:
        arch = Architecture(**{name: dict(model or {})[name] for name in Architecture.__dataclass_fields__})
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointFormatError(f"manifest 'model' in {directory} lacks the architecture: {exc!r}") from None
    ints = (arch.vocab_size, arch.block_size, arch.n_layer, arch.n_embd, arch.n_head)
    if not all(isinstance(v, int) and v > 0 for v in ints) or arch.n_embd % arch.n_head:
        raise CheckpointFormatError(f"manifest 'model' in {directory} is not a valid architecture: {arch}")
    return arch


def expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model (in PyTorch's nn.Linear (out, in) layout), biases included."""
    c = arch.n_embd
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (arch.vocab_size, c), "wpe.weight": (arch.block_size, c),
                                          "ln_f.weight": (c,), "ln_f.bias": (c,)}
    per_layer = {"ln_1.weight": (c,), "ln_1.bias": (c,), "attn.c_attn.weight": (3 * c, c),
                 "attn.c_attn.bias": (3 * c,), "attn.c_proj.weight": (c, c), "attn.c_proj.bias": (c,),
                 "ln_2.weight": (c,), "ln_2.bias": (c,), "mlp.c_fc.weight": (4 * c, c), "mlp.c_fc.bias": (4 * c,),
                 "mlp.c_proj.weight": (c, 4 * c), "mlp.c_proj.bias": (c,)}
    for i in range(arch.n_layer):
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in per_layer.items()})
    return shapes


def _with_zero_biases(tensors: dict[str, np.ndarray], arch: Architecture) -> dict[str, np.ndarray]:
    """A model with bias=False has no bias tensors; GPT-2-shaped runtimes need them, and zeros add nothing."""
    if arch.bias:
        return tensors
    zeros = {name: np.zeros(shape, np.float32) for name, shape in expected_shapes(arch).items()
             if name.endswith(".bias") and name not in tensors}
    return {**tensors, **zeros}


def _check_shapes(tensors: dict[str, np.ndarray], arch: Architecture, directory: Path) -> None:
    expected = expected_shapes(arch)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [f"{k}: {tensors[k].shape} != {shape}" for k, shape in expected.items()
             if k in tensors and tensors[k].shape != shape]
    if missing or unexpected or wrong:
        raise CheckpointFormatError(f"weights in {directory} do not match the manifest's model: missing "
                                    f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
