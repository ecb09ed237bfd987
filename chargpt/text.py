"""Text files read exactly: bytes decoded as strict UTF-8, line endings, byte order mark and NUL kept as they are."""

from __future__ import annotations

import codecs
import os
from importlib.resources.abc import Traversable
from pathlib import Path

READ_BLOCK_BYTES = 1 << 20


class TextDecodeError(ValueError):
    """A file that should hold UTF-8 text does not."""


def read_text(path: str | os.PathLike[str] | Traversable) -> str:
    """The file's characters, exactly.

    Path.read_text and open() in text mode translate '\\r\\n' and '\\r' to '\\n' (universal newlines), which
    would give a model trained on a Windows or old-Mac file a different vocabulary from the corpus uploaded;
    'utf-8-sig' would drop a byte order mark the upload counted. Decoding the bytes keeps every character.
    """
    data = path.read_bytes() if isinstance(path, Traversable) else Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextDecodeError(f"{path}: not valid UTF-8: bad byte at offset {exc.start} ({exc.reason})") from None


def read_chars(path: str | os.PathLike[str], start: int, count: int, block_bytes: int = READ_BLOCK_BYTES) -> str:
    """Characters [start, start + count) of a UTF-8 file, decoded exactly, holding one block in memory at a time."""
    if start < 0 or count < 0:
        raise ValueError(f"start and count must be >= 0 (got {start}, {count})")
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    parts: list[str] = []
    seen = 0  # characters decoded before this block
    with open(path, "rb") as f:
        while count > 0:
            data = f.read(block_bytes)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise TextDecodeError(f"{path}: not valid UTF-8 ({exc.reason})") from None
            skip = max(0, start - seen)
            piece = text[skip:skip + count]
            parts.append(piece)
            count -= len(piece)
            seen += len(text)
            if not data:
                break
    return "".join(parts)
