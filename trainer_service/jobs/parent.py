"""Resolving a fine-tune's parent (init_from: a job's checkpoint, or a directory in the data dir) to a checkpoint.

Every bad reference names its field: a malformed one is INVALID_ARGUMENT, a path outside the trainer's data
directory PERMISSION_DENIED, an unknown job or missing directory NOT_FOUND, a job without that checkpoint (yet)
or an unreadable manifest FAILED_PRECONDITION. The version found is pinned: Parent.pin copies it into the new job's
directory, so the parent job's later checkpoints cannot change the child's start; the weights are hashed again
when the job starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from chargpt.core.checkpoint import Lineage, Manifest, read_manifest
from chargpt.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from chargpt.formats.checkpoint_dir import resolve_checkpoint_dir
from chargpt.server.tenancy.principal import check_visible, current_principal
from trainer_service.jobs.checkpoints import CheckpointSnapshot, checkpoint_dir, open_directory
from trainer_service.jobs.request import ParentRef
from trainer_service.store import Store
from trainer_service.training.api import BEST, InitSource

JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex, as CreateTrainingJob assigns


class Parent:
    """A resolved parent checkpoint: the version opened at creation, its manifest, and where the job reads it."""

    def __init__(self, source: InitSource, snapshot: CheckpointSnapshot) -> None:
        self.source, self.snapshot = source, snapshot
        self.manifest: Manifest = snapshot.info.manifest

    def pin(self) -> None:
        """Copy the opened version to source.path (in the new job's directory), whatever the parent wrote since."""
        self.snapshot.write_to(self.source.path)

    def close(self) -> None:
        self.snapshot.close()


def resolve_init_from(ref: ParentRef, data_dir: Path, store: Store, job_dir: Callable[[str], Path],
                      pin_to: Path) -> Parent:
    """The checkpoint `ref` names, opened (close() the result); the job will read its copy at `pin_to`."""
    if ref.job_id is not None:
        kind = ref.kind or BEST
        directory, field = _job_checkpoint(ref.job_id, kind, store, job_dir), "init_from.job_id"
    elif ref.path is not None:
        if ref.kind:
            raise InvalidArgumentError("init_from.kind", "applies to init_from.job_id only")
        if not current_principal().is_admin:  # a directory could hold any tenant's checkpoint
            raise PermissionDeniedError("init_from.path: needs an admin key; use init_from.job_id")
        kind, directory, field = "", _inside(ref.path, data_dir), "init_from.path"
    else:
        raise InvalidArgumentError("init_from", "set job_id or path")
    _manifest(directory, field)  # a missing or unreadable checkpoint, named by its field
    snapshot = open_directory(directory, kind)
    if snapshot is None:  # replaced again and again while we read it, or damaged
        raise FailedPreconditionError(f"{field}: could not pin the checkpoint at {directory} (it kept changing "
                                      "or its weights do not match its manifest); try again")
    manifest = snapshot.info.manifest
    t = manifest.training
    lineage = Lineage(job_id=ref.job_id if ref.job_id is not None else t.job_id, kind=kind,
                      weights_sha256=manifest.weights.sha256, corpus_id=t.corpus_id, corpus_name=t.corpus_name,
                      corpus_sha256=t.corpus_sha256, step=t.step)
    return Parent(InitSource(path=pin_to, vocabulary=manifest.vocabulary, lineage=lineage), snapshot)


def _job_checkpoint(job_id: str, kind: str, store: Store, job_dir: Callable[[str], Path]) -> Path:
    if not JOB_ID_PATTERN.match(job_id):
        raise InvalidArgumentError("init_from.job_id", f"not a job id: {job_id[:64]!r}")
    try:
        check_visible(store.get_job(job_id).owner, "")  # another tenant's job: exactly like a missing one
    except NotFoundError:
        raise NotFoundError(f"init_from.job_id: training job {job_id!r} not found") from None
    directory = checkpoint_dir(job_dir(job_id), kind)
    try:
        resolve_checkpoint_dir(directory)
    except CheckpointNotFoundError:
        raise FailedPreconditionError(f"init_from.job_id: job {job_id} has no {kind} checkpoint (yet)") from None
    return directory


def _inside(path: str, data_dir: Path) -> Path:
    """The checkpoint directory `path` names, which must lie inside the trainer's data directory."""
    if not path or "\x00" in path or ".." in PurePosixPath(path).parts:
        raise InvalidArgumentError("init_from.path", f"must be a directory path without '..' (got {path[:200]!r})")
    root = data_dir.resolve()
    resolved = (root / path).resolve()  # an absolute `path` replaces root; symlinks are followed before the check
    if not resolved.is_relative_to(root):
        raise PermissionDeniedError(f"init_from.path: {path!r} is outside the trainer's data directory")
    return resolved


def _manifest(directory: Path, field: str) -> Manifest:
    try:
        return read_manifest(directory)
    except CheckpointNotFoundError:
        raise NotFoundError(f"{field}: no checkpoint at {directory}") from None
    except CheckpointError as exc:
        raise FailedPreconditionError(f"{field}: unreadable checkpoint: {exc}") from None
