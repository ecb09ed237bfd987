"""Chunked corpus and model uploads, and verified, atomic checkpoint downloads."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from chargpt.formats import IMPORT_FILES, NANOGPT_CKPT, NANOGPT_META
from chargpt.v1 import trainer_pb2
from chargpt_client import from_proto
from chargpt_client import types as t
from chargpt_client.receiver import CheckpointReceiver

UPLOAD_CHUNK_BYTES = 1024 * 1024
CorpusSource = str | bytes | os.PathLike[str] | IO[bytes] | IO[str]


class UploadSource:
    """Chunks of a corpus: a path (os.PathLike), text (str), bytes, or a binary or text file object.

    A plain str is the text itself, never a path: pass pathlib.Path for files. Paths and binary files upload
    their bytes exactly; a text file object uploads what it yields, so it must not translate line endings.
    """

    def __init__(self, source: CorpusSource, chunk_bytes: int = UPLOAD_CHUNK_BYTES) -> None:
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        self._source = source
        self._chunk = chunk_bytes
        self._start = self._tell(source)
        self.error: Exception | None = None  # why chunks() stopped the upload, when it did

    @staticmethod
    def _tell(source: CorpusSource) -> int | None:
        if isinstance(source, str | bytes | os.PathLike):
            return 0
        try:
            return source.tell() if source.seekable() else None
        except (OSError, AttributeError):
            return None

    @property
    def replayable(self) -> bool:
        """Whether the bytes can be produced again for a retry."""
        return self._start is not None

    def chunks(self) -> Iterator[bytes]:
        source = self._source
        if isinstance(source, str):
            source = source.encode("utf-8")
        if isinstance(source, bytes):
            for i in range(0, len(source), self._chunk):
                yield source[i:i + self._chunk]
        elif isinstance(source, os.PathLike):
            with open(source, "rb") as f:
                yield from iter(lambda: f.read(self._chunk), b"")
        else:
            if self._start is not None:
                source.seek(self._start)
            yield from self._file_chunks(source)

    def _file_chunks(self, f: IO[Any]) -> Iterator[bytes]:
        carriage_return = False
        while block := f.read(self._chunk):
            if isinstance(block, str):
                carriage_return = carriage_return or "\r" in block
                block = block.encode("utf-8")
            yield block
        # A text stream opened with universal newlines (open()'s default) turns "\r\n" and "\r" into "\n"
        # before we see them: its `newlines` records the endings it met, while no "\r" came through.
        met = getattr(f, "newlines", None) or ()
        if not carriage_return and any("\r" in ending for ending in ((met,) if isinstance(met, str) else met)):
            self.error = ValueError(
                "the text file object translated '\\r\\n' or '\\r' line endings to '\\n' (open() without "
                "newline=''); nothing was stored - pass a path, a binary file, or a file opened with newline=''")
            raise self.error

    def requests(self, name: str, description: str) -> Iterator[trainer_pb2.UploadCorpusRequest]:
        yield trainer_pb2.UploadCorpusRequest(header=trainer_pb2.CorpusHeader(name=name, description=description))
        for chunk in self.chunks():
            yield trainer_pb2.UploadCorpusRequest(data=chunk)


class ModelUpload:
    """An ImportModel stream: a header naming each file with its size and sha256, then chunks with their sha256.

    `format` is "nanogpt" (`path`: ckpt.pt, `meta`: its meta.pkl) or "hf" (`path`: the model's directory).
    The files are hashed here, before anything is sent; the server checks every chunk and file against them.
    """

    def __init__(self, format: str, path: str | os.PathLike[str], meta: str | os.PathLike[str] | None = None,
                 chunk_bytes: int = UPLOAD_CHUNK_BYTES) -> None:
        if format not in IMPORT_FILES:
            raise ValueError(f"format must be one of {', '.join(IMPORT_FILES)} (got {format!r})")
        if meta is not None and format != "nanogpt":
            raise ValueError("meta (meta.pkl) applies to the nanogpt format only")
        self.format, self._chunk = format, chunk_bytes
        self.files = _import_files(format, Path(path), None if meta is None else Path(meta))
        self.sha256 = {name: _file_sha256(p) for name, p in self.files.items()}

    def requests(self, name: str) -> Iterator[trainer_pb2.ImportModelRequest]:
        files = [trainer_pb2.CheckpointFile(name=n, size_bytes=p.stat().st_size, sha256=self.sha256[n])
                 for n, p in self.files.items()]
        number = trainer_pb2.ImportFormat.Value(f"IMPORT_FORMAT_{self.format.upper()}")
        yield trainer_pb2.ImportModelRequest(header=trainer_pb2.ImportModelHeader(name=name, format=number,
                                                                                  files=files))
        for file_name, path in self.files.items():
            with open(path, "rb") as f:
                offset = 0
                while data := f.read(self._chunk):
                    yield trainer_pb2.ImportModelRequest(chunk=trainer_pb2.CheckpointChunk(
                        file_name=file_name, offset=offset, data=data, sha256=hashlib.sha256(data).hexdigest()))
                    offset += len(data)


def _import_files(format: str, path: Path, meta: Path | None) -> Mapping[str, Path]:
    """The local file behind each name the server knows; a missing one is FileNotFoundError before connecting."""
    if format == "nanogpt":
        files = {NANOGPT_CKPT: path, **({} if meta is None else {NANOGPT_META: meta})}
    else:
        files = {name: path / name for name in IMPORT_FILES[format][0]}
    for file in files.values():
        if not file.is_file():
            raise FileNotFoundError(f"no such file: {file}")
    return files


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class CheckpointWriter:
    """Receives a DownloadCheckpoint stream into `destination` (a new directory) through CheckpointReceiver."""

    def __init__(self, destination: str | os.PathLike[str]) -> None:
        self.destination = Path(destination)
        self._receiver = CheckpointReceiver(self.destination.parent)

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._receiver.abort()

    def feed(self, message: trainer_pb2.DownloadCheckpointResponse) -> int:
        """Check and write one message; returns the file bytes it carried."""
        return self._receiver.feed(message)

    def finish(self, overwrite: bool = False) -> t.DownloadedCheckpoint:
        """Verify every file, then move the directory into place (replacing an old one only if `overwrite`)."""
        header = self._receiver.header
        path = self._receiver.finish(self.destination.name, "replace" if overwrite else "error")
        assert header is not None  # finish raised DataLoss otherwise
        return t.DownloadedCheckpoint(path=str(path), checkpoint=from_proto.checkpoint(header.checkpoint),
                                      files={f.name: f.sha256 for f in header.files})


def consume_download(messages: Iterator[trainer_pb2.DownloadCheckpointResponse],
                     destination: str | os.PathLike[str], overwrite: bool,
                     on_bytes: Callable[[int], None] | None = None) -> t.DownloadedCheckpoint:
    with CheckpointWriter(destination) as writer:
        for message in messages:
            received = writer.feed(message)
            if on_bytes is not None and received:
                on_bytes(received)
        return writer.finish(overwrite)


async def consume_download_async(messages: AsyncIterator[trainer_pb2.DownloadCheckpointResponse],
                                 destination: str | os.PathLike[str], overwrite: bool) -> t.DownloadedCheckpoint:
    with CheckpointWriter(destination) as writer:
        async for message in messages:
            writer.feed(message)
        return writer.finish(overwrite)
