"""Chunked corpus uploads from any source, and verified, atomic checkpoint downloads."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from chargpt.v1 import trainer_pb2
from chargpt_client import convert
from chargpt_client import types as t
from chargpt_client.errors import DataLoss

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


class CheckpointWriter:
    """Consumes a DownloadCheckpoint stream: checks every chunk's and file's sha256, then renames into place."""

    def __init__(self, destination: str | os.PathLike[str]) -> None:
        self.destination = Path(destination)
        self.checkpoint: t.Checkpoint | None = None
        self._files: dict[str, trainer_pb2.CheckpointFile] = {}
        self._hashes: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        self._tmp: Path | None = None

    def __enter__(self) -> CheckpointWriter:
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.", dir=self.destination.parent))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None and self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)

    def feed(self, message: trainer_pb2.DownloadCheckpointResponse) -> None:
        if message.WhichOneof("part") == "header":
            self.checkpoint = convert.checkpoint(message.header.checkpoint)
            self._files = {f.name: f for f in message.header.files}
            for f in self._files.values():
                self._path(f.name).touch()
                self._hashes[f.name] = hashlib.sha256()
                self._sizes[f.name] = 0
            return
        chunk = message.chunk
        if chunk.file_name not in self._files:
            raise DataLoss(f"chunk for unknown file {chunk.file_name!r}")
        if hashlib.sha256(chunk.data).hexdigest() != chunk.sha256:
            raise DataLoss(f"{chunk.file_name}: chunk at offset {chunk.offset} does not match its sha256")
        if chunk.offset != self._sizes[chunk.file_name]:
            raise DataLoss(f"{chunk.file_name}: expected offset {self._sizes[chunk.file_name]}, got {chunk.offset}")
        with open(self._path(chunk.file_name), "ab") as out:
            out.write(chunk.data)
        self._hashes[chunk.file_name].update(chunk.data)
        self._sizes[chunk.file_name] += len(chunk.data)

    def _path(self, name: str) -> Path:
        assert self._tmp is not None, "use CheckpointWriter as a context manager"
        path = (self._tmp / name).resolve()
        if not path.is_relative_to(self._tmp.resolve()):
            raise DataLoss(f"file name {name!r} escapes the checkpoint directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def finish(self, overwrite: bool = False) -> t.DownloadedCheckpoint:
        """Verify every file, then move the directory into place (replacing an old one only if `overwrite`)."""
        if self.checkpoint is None or self._tmp is None:
            raise DataLoss("the download ended before its header")
        for name, f in self._files.items():
            if self._sizes[name] != f.size_bytes or self._hashes[name].hexdigest() != f.sha256:
                raise DataLoss(f"{name}: got {self._sizes[name]} bytes that do not match the header's "
                               f"size {f.size_bytes} and sha256")
        if self.destination.exists():
            if not overwrite:
                raise FileExistsError(f"{self.destination} exists (use overwrite)")
            shutil.rmtree(self.destination)
        os.replace(self._tmp, self.destination)
        return t.DownloadedCheckpoint(path=str(self.destination), checkpoint=self.checkpoint,
                                      files={n: f.sha256 for n, f in self._files.items()})


def consume_download(messages: Iterator[trainer_pb2.DownloadCheckpointResponse],
                     destination: str | os.PathLike[str], overwrite: bool,
                     on_bytes: Callable[[int], None] | None = None) -> t.DownloadedCheckpoint:
    with CheckpointWriter(destination) as writer:
        for message in messages:
            writer.feed(message)
            if on_bytes is not None and message.WhichOneof("part") == "chunk":
                on_bytes(len(message.chunk.data))
        return writer.finish(overwrite)
