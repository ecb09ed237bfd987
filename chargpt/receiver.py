"""The one receiver of DownloadCheckpoint streams: every chunk and file verified, renamed into place atomically."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Literal

from chargpt.errors import DataLossError, ResourceExhaustedError
from chargpt.v1 import trainer_pb2

# Plain file names only: no separator, no leading dot (so no "..", no hidden files), bounded length.
PLAIN_FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_FILES = 16
MAX_TOTAL_BYTES = 8 << 30  # far above any chargpt checkpoint; a hostile header cannot fill the disk
IfExists = Literal["error", "replace", "keep"]


class CheckpointReceiver:
    """Feed it a DownloadCheckpoint stream's messages, then `finish` (verify, rename into place) or `abort`.

    Files are written to a temporary directory inside `directory`, created when the first chunk arrives, so
    `finish` is a rename on the same file system and no reader ever sees a partial checkpoint. Every problem
    with the stream is a DataLossError (ResourceExhaustedError for a header over the size cap): the client library
    and the inference service each map them to their own errors. Use it as a context manager: leaving the block
    without `finish` removes the temporary directory.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_files: int = MAX_FILES,
                 max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
        self.directory = Path(directory)
        self.header: trainer_pb2.CheckpointArchiveHeader | None = None
        self._max_files, self._max_total_bytes = max_files, max_total_bytes
        self._files: dict[str, trainer_pb2.CheckpointFile] = {}
        self._written: dict[str, int] = {}
        self._digests: dict[str, hashlib._Hash] = {}
        self._handles: dict[str, IO[bytes]] = {}
        self._tmp: Path | None = None

    def __enter__(self) -> CheckpointReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def feed(self, message: trainer_pb2.DownloadCheckpointResponse) -> int:
        """Check and write one message; returns the number of file bytes it carried (for progress)."""
        part = message.WhichOneof("part")
        if self.header is None:
            if part != "header":
                raise DataLossError("the first message of the checkpoint stream is not its header")
            self._check_header(message.header)
            self.header = message.header
            return 0
        if part != "chunk":
            raise DataLossError(f"unexpected {part or 'empty'} message after the checkpoint header")
        self._write(message.chunk)
        return len(message.chunk.data)

    def _check_header(self, header: trainer_pb2.CheckpointArchiveHeader) -> None:
        names = [f.name for f in header.files]
        if not names or len(names) > self._max_files or len(set(names)) != len(names):
            raise DataLossError(f"the checkpoint header lists a bad set of files ({len(names)} entries, at most "
                           f"{self._max_files} distinct ones): {names[:20]}")
        for f in header.files:
            if not PLAIN_FILE_NAME.match(f.name):
                raise DataLossError(f"bad file name {f.name!r} in the checkpoint header: only plain names (letters, "
                               "digits . _ -, not starting with a dot) are accepted, so none escapes the directory")
            if f.size_bytes < 0 or not SHA256_HEX.match(f.sha256):
                raise DataLossError(f"{f.name}: bad size {f.size_bytes} or sha256 {f.sha256[:80]!r} in the header")
        total = sum(f.size_bytes for f in header.files)
        if total > self._max_total_bytes:
            raise ResourceExhaustedError(f"the checkpoint is {total} bytes, over the {self._max_total_bytes}-byte cap")
        self._files = {f.name: f for f in header.files}
        self._written = dict.fromkeys(self._files, 0)
        self._digests = {name: hashlib.sha256() for name in self._files}

    def _write(self, chunk: trainer_pb2.CheckpointChunk) -> None:
        name = chunk.file_name
        entry = self._files.get(name)
        if entry is None:
            raise DataLossError(f"chunk for file {name[:200]!r}, which the header does not list")
        if chunk.offset != self._written[name]:
            raise DataLossError(f"{name}: chunk at offset {chunk.offset}, expected {self._written[name]}")
        if hashlib.sha256(chunk.data).hexdigest() != chunk.sha256:
            raise DataLossError(f"{name}: chunk at offset {chunk.offset} does not match its sha256")
        if self._written[name] + len(chunk.data) > entry.size_bytes:
            raise DataLossError(f"{name}: more bytes than the header's {entry.size_bytes}")
        self._handle(name).write(chunk.data)
        self._digests[name].update(chunk.data)
        self._written[name] += len(chunk.data)

    def _handle(self, name: str) -> IO[bytes]:
        if name not in self._handles:
            # Exclusive creation: a name already checked as plain cannot reach outside the fresh directory.
            self._handles[name] = open(self._temporary() / name, "xb")  # noqa: SIM115 (closed in _close)
        return self._handles[name]

    def _temporary(self) -> Path:
        if self._tmp is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=self.directory))
        return self._tmp

    def finish(self, name: str, if_exists: IfExists = "error") -> Path:
        """Verify every file's size and sha256, then rename the files into `directory / name` in one step.

        `if_exists`: "error" raises FileExistsError, "replace" removes the old directory first, "keep" keeps the
        existing one (e.g. a concurrent download of the same checkpoint that finished first) and drops this one.
        """
        if self.header is None:
            raise DataLossError("the checkpoint stream ended before its header")
        self._close()
        for file_name, entry in self._files.items():
            if self._written[file_name] != entry.size_bytes:
                raise DataLossError(f"{file_name}: received {self._written[file_name]} of {entry.size_bytes} bytes")
            if self._digests[file_name].hexdigest() != entry.sha256:
                raise DataLossError(f"{file_name}: the file's sha256 does not match the header")
            if entry.size_bytes == 0:
                (self._temporary() / file_name).touch()  # an empty file may get no chunk but still exists
        final = self.directory / name
        if final.exists():
            if if_exists == "keep":
                self.abort()
                return final
            if if_exists == "error":
                raise FileExistsError(f"{final} exists (use overwrite)")
            shutil.rmtree(final)
        os.replace(self._temporary(), final)
        self._tmp = None
        return final

    def abort(self) -> None:
        """Close and remove whatever was written; the receiver cannot be finished afterwards."""
        self._close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.header = None

    def _close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
