"""A job's checkpoints on disk: listing them and reading a consistent snapshot of one for download."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from chargpt.core.checkpoint import Manifest, read_manifest
from chargpt.errors import CheckpointError, DataLossError, InvalidArgumentError, NotFoundError
from chargpt.formats.checkpoint_dir import MANIFEST_FILE, resolve_checkpoint_dir
from trainer_service.training.api import BEST, CHECKPOINTS_DIR, LATEST

MIN_CHUNK, MAX_CHUNK, DEFAULT_CHUNK = 1024, 4 * 1024 * 1024, 1024 * 1024
ATTEMPTS = 5  # a checkpoint replaced between opening its two files is retried


@dataclass(frozen=True)
class CheckpointInfo:
    kind: str  # "latest" or "best"
    manifest: Manifest
    size_bytes: int  # manifest + weights: what a download contains
    created: float


def checkpoint_dir(job_dir: Path, kind: str) -> Path:
    return job_dir / CHECKPOINTS_DIR / kind


def list_checkpoints(job_dir: Path) -> list[CheckpointInfo]:
    found = []
    for kind in (LATEST, BEST):
        try:
            directory = resolve_checkpoint_dir(checkpoint_dir(job_dir, kind))
            manifest = read_manifest(directory)
            size = (directory / MANIFEST_FILE).stat().st_size + manifest.weights.size_bytes
        except (CheckpointError, OSError):
            continue  # none yet, or replaced while we looked
        found.append(CheckpointInfo(kind, manifest, size, manifest.training.created_time.timestamp()))
    return found


def chunk_size_or_default(chunk_size: int) -> int:
    if chunk_size == 0:
        return DEFAULT_CHUNK
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise InvalidArgumentError("chunk_size", f"must be between {MIN_CHUNK} and {MAX_CHUNK} bytes "
                                   f"(got {chunk_size}); 0 means {DEFAULT_CHUNK}")
    return chunk_size


@dataclass
class OpenFile:
    name: str
    handle: BinaryIO
    size_bytes: int
    sha256: str


class CheckpointSnapshot:
    """Open handles on one consistent version of a checkpoint's public files (never the training state).

    The engine may replace the directory while we stream: handles opened before the swap keep reading the
    old, deleted files, and the manifest's weights hash proves both handles belong to the same version.
    """

    def __init__(self, info: CheckpointInfo, files: list[OpenFile]) -> None:
        self.info, self.files = info, files

    def chunks(self, chunk_size: int) -> Iterator[tuple[str, int, bytes]]:
        for f in self.files:
            f.handle.seek(0)
            offset = 0
            while data := f.handle.read(chunk_size):
                yield f.name, offset, data
                offset += len(data)

    def write_to(self, directory: Path) -> None:
        """Copy this version's files into `directory` (new): a pinned copy no later writer can change."""
        directory.mkdir(parents=True)
        for f in self.files:
            f.handle.seek(0)
            with open(directory / f.name, "wb") as out:
                shutil.copyfileobj(f.handle, out)
                out.flush()
                os.fsync(out.fileno())

    def close(self) -> None:
        for f in self.files:
            f.handle.close()


def open_snapshot(job_dir: Path, kind: str) -> CheckpointSnapshot:
    """kind "" means best if present, else latest."""
    kinds = [kind] if kind else [BEST, LATEST]
    for candidate in kinds:
        snapshot = open_directory(checkpoint_dir(job_dir, candidate), candidate)
        if snapshot is not None:
            return snapshot
    if kind and _exists(job_dir, kind):
        raise DataLossError(f"checkpoint {kind!r} kept changing or is corrupt; try again")
    raise NotFoundError(f"job has no {kind or 'best or latest'} checkpoint yet")


def _exists(job_dir: Path, kind: str) -> bool:
    try:
        resolve_checkpoint_dir(checkpoint_dir(job_dir, kind))
    except CheckpointError:
        return False
    return True


def open_directory(path: Path, kind: str = "") -> CheckpointSnapshot | None:
    """One consistent version of the checkpoint at `path`, retried while a writer replaces it; None if there is
    none or it stays inconsistent (`kind` labels it: "latest", "best", or "" for a directory of no job)."""
    for _ in range(ATTEMPTS):
        snapshot = _try_open(path, kind)
        if snapshot is not None:
            return snapshot
    return None


def _try_open(path: Path, kind: str) -> CheckpointSnapshot | None:
    try:
        directory = resolve_checkpoint_dir(path)
        manifest_handle = open(directory / MANIFEST_FILE, "rb")  # noqa: SIM115 - owned by the snapshot
    except (CheckpointError, OSError):
        return None
    files = [_hashed(MANIFEST_FILE, manifest_handle)]
    try:
        manifest = Manifest.model_validate_json(manifest_handle.read())
        if Path(manifest.weights.file).name != manifest.weights.file:  # copies and downloads take plain names only
            raise ValueError(f"weights file {manifest.weights.file!r} is not a plain file name")
        weights = _hashed(manifest.weights.file, open(directory / manifest.weights.file, "rb"))  # noqa: SIM115
        files.append(weights)
    except (OSError, ValueError):
        files[0].handle.close()
        return None
    if weights.sha256 != manifest.weights.sha256:  # manifest and weights from different versions
        for f in files:
            f.handle.close()
        return None
    size = sum(f.size_bytes for f in files)
    info = CheckpointInfo(kind, manifest, size, manifest.training.created_time.timestamp())
    return CheckpointSnapshot(info, files)


def _hashed(name: str, handle: BinaryIO) -> OpenFile:
    digest, size = hashlib.sha256(), 0
    handle.seek(0)
    while data := handle.read(1 << 20):
        digest.update(data)
        size += len(data)
    handle.seek(0)
    return OpenFile(name, handle, size, digest.hexdigest())
