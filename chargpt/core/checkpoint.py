"""The checkpoint format shared by both services: a directory with manifest.json and safetensors weights.

Layout of a checkpoint directory:
    manifest.json        format version, model config, vocabulary, training metadata, weights sha256
    model.safetensors    the weights (float32; the tied output head is stored once, as wte.weight)
    (anything else)      e.g. the trainer's resume state; readers of the format ignore it

Writes are atomic: everything goes to a temporary sibling directory that is renamed into place, and the
previous version is kept as `<name>.old` until the new one is in, so a reader always finds a whole one.
Loading never unpickles: weights come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file

from chargpt import __version__
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT
from chargpt.core.tokenizer import CharTokenizer
from chargpt.errors import CheckpointCorruptError, CheckpointFormatError
from chargpt.formats.checkpoint_dir import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    read_manifest_json,
    resolve_checkpoint_dir,
    verified_weights,
)

WEIGHTS_FILE = "model.safetensors"
TIED_KEY = "lm_head.weight"  # the same tensor as wte.weight; stored once


class Lineage(BaseModel):
    """The checkpoint a fine-tuned model started from (its parent), or the file an imported model came from."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_id: str = ""  # "" for a checkpoint directory no trainer job wrote
    kind: str = ""  # "best" or "latest" of that job; "" for a directory
    weights_sha256: str
    corpus_id: str = ""
    corpus_name: str = ""
    corpus_sha256: str = ""
    step: int = 0
    source_format: str = ""  # "nanogpt" or "hf": imported; weights_sha256 is then the original weights file's
    source_vocabulary_sha256: str = ""  # an imported model's meta.pkl or tokenizer.json


class TrainingInfo(BaseModel):
    """Where the weights came from."""

    model_config = ConfigDict(extra="ignore")

    job_id: str = ""
    corpus_id: str = ""
    corpus_name: str = ""
    corpus_sha256: str = ""
    step: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    created_time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    library_versions: dict[str, str] = Field(default_factory=dict)
    parent: Lineage | None = None  # set for a model fine-tuned from another checkpoint


class WeightsInfo(BaseModel):
    file: str = WEIGHTS_FILE
    sha256: str
    size_bytes: int


class Manifest(BaseModel):
    """The contents of manifest.json."""

    model_config = ConfigDict(extra="ignore")

    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    model: ModelConfig
    vocabulary: str
    training: TrainingInfo
    weights: WeightsInfo


class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its tokenizer and its manifest."""

    def __init__(self, model: GPT, tokenizer: CharTokenizer, manifest: Manifest, path: Path) -> None:
        self.model, self.tokenizer, self.manifest, self.path = model, tokenizer, manifest, path


def library_versions() -> dict[str, str]:
    return {"chargpt": __version__, "torch": torch.__version__.split("+")[0]}


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], model: GPT, tokenizer: CharTokenizer,
                    training: TrainingInfo | None = None,
                    write_extra: Callable[[Path], None] | None = None) -> Manifest:
    """Write a checkpoint directory atomically; `write_extra(tmp_dir)` may add files (e.g. resume state)."""
    path = Path(path)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} characters, model {model.config.vocab_size}")
    training = training or TrainingInfo()
    if not training.library_versions:
        training = training.model_copy(update={"library_versions": library_versions()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state = {k: v.detach().to("cpu", torch.float32).contiguous()
                 for k, v in model.state_dict().items() if k != TIED_KEY}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        weights = WeightsInfo(sha256=file_sha256(tmp / WEIGHTS_FILE),
                              size_bytes=(tmp / WEIGHTS_FILE).stat().st_size)
        manifest = Manifest(model=model.config, vocabulary=tokenizer.vocabulary, training=training,
                            weights=weights)
        (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        if write_extra is not None:
            write_extra(tmp)
        _fsync_dir_files(tmp)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale_temporaries(path)
    return manifest


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries left by writers killed mid-write (a path has one writer at a time: the trainer's job
    lock), so repeated crashes cannot fill the disk with partial checkpoints."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _fsync_dir_files(directory: Path) -> None:
    """Flush file contents to disk before the rename makes them visible."""
    for child in directory.iterdir():
        if child.is_file():
            with open(child, "rb") as f:
                os.fsync(f.fileno())


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename tmp to path, keeping the previous version as path.old until the new one is in."""
    old = _old_path(path)
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(path, old)
    os.rename(tmp, path)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _old_path(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Parse and validate a checkpoint's manifest.json."""
    directory = resolve_checkpoint_dir(path)
    raw = read_manifest_json(directory)
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise CheckpointFormatError(f"invalid manifest in {directory}: {exc}") from None
    if len(manifest.vocabulary) != manifest.model.vocab_size:
        raise CheckpointFormatError(f"manifest vocabulary has {len(manifest.vocabulary)} characters "
                                    f"but model.vocab_size is {manifest.model.vocab_size}")
    return manifest


def load_checkpoint(path: str | os.PathLike[str], device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Checkpoint:
    """Load and verify a checkpoint: manifest, weights hash, weight names and shapes."""
    directory = resolve_checkpoint_dir(path)
    manifest = read_manifest(directory)
    weights_path, _ = verified_weights(directory, manifest.weights.file, manifest.weights.sha256)
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types for truncated headers
        raise CheckpointCorruptError(f"cannot read {weights_path}: {exc}") from None
    model = GPT(manifest.model)
    _check_state_matches(model, state, directory)
    model.load_state_dict(state, strict=False)  # the tied head comes with wte.weight
    model.to(device=device, dtype=dtype).eval()
    tokenizer = CharTokenizer(manifest.vocabulary)
    return Checkpoint(model, tokenizer, manifest, directory)


def _check_state_matches(model: GPT, state: dict[str, torch.Tensor], directory: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != TIED_KEY}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointFormatError(f"weights in {directory} do not match the config: "
                                    f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [f"{k}: {tuple(state[k].shape)} != {shape}" for k, shape in expected.items()
             if tuple(state[k].shape) != shape]
    if wrong:
        raise CheckpointFormatError(f"weight shapes in {directory} do not match the config: {wrong[:5]}")
