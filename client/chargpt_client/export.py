"""Export a trainer job's checkpoint or a local checkpoint directory to a format other runtimes read (hf/gguf/onnx)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from chargpt_client.sync import TrainerClient

CHECKPOINT_KINDS = ("", "best", "latest")


@dataclass(frozen=True)
class ExportResult:
    """Where the export went, what it holds, and which checkpoint it came from."""

    path: str
    format: str
    files: list[str]
    source: str  # the checkpoint directory, or "JOB:kind" for a job's checkpoint
    step: int | None = None  # the job checkpoint's step (None for a local directory)
    weights_sha256: dict[str, str] = field(default_factory=dict)  # the downloaded files' verified sha256


def parse_source(source: str | os.PathLike[str]) -> tuple[Path | None, str, str]:
    """(directory, "", "") for a checkpoint directory, else (None, job_id, kind) for JOB, JOB:best or JOB:latest.

    A source with a path separator, or naming an existing directory, is a directory; anything else is a job.
    """
    text = os.fspath(source)
    if isinstance(source, os.PathLike) or os.sep in text or "/" in text or Path(text).is_dir():
        return Path(text), "", ""
    job_id, _, kind = text.partition(":")
    if not job_id or kind.lower() not in CHECKPOINT_KINDS:
        raise ValueError(f"{text!r} is neither a checkpoint directory nor JOB, JOB:best or JOB:latest")
    return None, job_id, kind.lower()


def export_model(source: str | os.PathLike[str], format: str, out: str | os.PathLike[str], *,
                 trainer: TrainerClient | None = None, gguf_types: tuple[str, ...] = ("f32", "f16"),
                 overwrite: bool = False) -> ExportResult:
    """Convert `source` to `format` ("hf", "gguf" or "onnx") in the new directory `out`.

    `source` is a local checkpoint directory, converted directly, or "JOB[:best|latest]": the job's checkpoint is
    downloaded (verified, through `trainer`, by default a TrainerClient from the CHARGPT_* environment) into a
    temporary directory first. Needs the `export` extra (onnx: torch too). Nothing is left in `out` on failure.
    """
    from chargpt.formats import export_checkpoint  # the format libraries load only when exporting

    directory, job_id, kind = parse_source(source)
    if directory is not None:
        path = export_checkpoint(directory, format, out, gguf_types=gguf_types, overwrite=overwrite)
        return ExportResult(str(path), format, _files(path), str(directory))
    client = trainer or TrainerClient()
    try:
        with tempfile.TemporaryDirectory(prefix="chargpt-export-") as tmp:
            downloaded = client.download_checkpoint(job_id, Path(tmp) / "checkpoint", kind=kind)
            path = export_checkpoint(downloaded.path, format, out, gguf_types=gguf_types, overwrite=overwrite)
    finally:
        if trainer is None:
            client.close()
    c = downloaded.checkpoint
    return ExportResult(str(path), format, _files(path), f"{job_id}:{c.kind}", c.step, downloaded.files)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())
