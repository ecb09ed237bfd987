"""Model formats other runtimes read: export a chargpt checkpoint directory to hf, gguf or onnx; import nanogpt, hf.

Importing this package is cheap (no numpy, torch or format library): each format's module is imported when used,
so the client and CLI start without the `export` extra installed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from chargpt.errors import AlreadyExistsError, ChargptError, InvalidArgumentError

if TYPE_CHECKING:
    from chargpt.formats.checkpoint_dir import CharCheckpoint

Writer = Callable[["CharCheckpoint", Path, tuple[str, ...]], None]  # (checkpoint, directory, gguf types)

FORMATS = ("hf", "gguf", "onnx")
GGUF_TYPES = ("f32", "f16", "q8_0")
# chargpt.core.sampling's "balanced" preset, the exports' default sampling (that module imports torch; tests/formats
# checks that the two agree)
# What each format needs beyond the base install (the `export` extra; onnx also torch, the server install).
REQUIREMENTS = {"hf": ("numpy", "safetensors", "tokenizers"), "gguf": ("numpy", "safetensors", "gguf"),
                "onnx": ("numpy", "safetensors", "onnx", "torch")}

# What ImportModel takes per format, by the names it knows the files by: (files it needs, files it may add).
NANOGPT_CKPT, NANOGPT_META = "ckpt.pt", "meta.pkl"
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json")
IMPORT_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "nanogpt": ((NANOGPT_CKPT,), (NANOGPT_META,)), "hf": (HF_FILES, ())}


class ExportUnavailable(ChargptError, ImportError):
    """A package the format needs is not installed."""

    def __init__(self, format_name: str, missing: str) -> None:
        super().__init__(f"exporting to {format_name} needs {', '.join(REQUIREMENTS[format_name])}; {missing} is "
                         "not installed (pip install 'chargpt[export]'" + (", plus torch" if format_name == "onnx"
                                                                           else "") + ")")


def export_checkpoint(checkpoint_dir: str | os.PathLike[str], format_name: str, out: str | os.PathLike[str], *,
                      gguf_types: tuple[str, ...] = ("f32", "f16"), overwrite: bool = False) -> Path:
    """Convert the checkpoint directory to `format_name` in a new directory `out`; returns its path.

    Everything is written to a temporary sibling that is renamed to `out` only once complete, so a failure leaves
    nothing half-written. `out` must not exist (or be an empty directory) unless `overwrite`.
    """
    if format_name not in FORMATS:
        raise InvalidArgumentError("format", f"{format_name!r} is not one of {', '.join(FORMATS)}")
    unknown = sorted(set(gguf_types) - set(GGUF_TYPES))
    if unknown or not gguf_types:
        raise InvalidArgumentError("gguf_types", f"{unknown or 'none'}: choose from {', '.join(GGUF_TYPES)}")
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise AlreadyExistsError(f"{out} already exists and is not an empty directory (pass --overwrite, or "
                                 "overwrite=True, to replace it)")
    writer = _writer(format_name)
    from chargpt.formats.checkpoint_dir import read_checkpoint

    checkpoint = read_checkpoint(checkpoint_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer(checkpoint, tmp, gguf_types)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _writer(format_name: str) -> Writer:
    """The format's export function; imports its libraries now, so a missing one is named before any work."""
    try:
        if format_name == "hf":
            import tokenizers  # noqa: F401  (hf_transformers imports it when writing)

            from chargpt.formats.hf_transformers import export_hf
            return lambda checkpoint, out, _types: export_hf(checkpoint, out)
        if format_name == "gguf":
            from chargpt.formats.llama_gguf import export_gguf
            return export_gguf
        import torch  # noqa: F401

        from chargpt.formats.onnx_graph import export_onnx
        return lambda checkpoint, out, _types: export_onnx(checkpoint, out)
    except ModuleNotFoundError as exc:
        raise ExportUnavailable(format_name, exc.name or str(exc)) from None
