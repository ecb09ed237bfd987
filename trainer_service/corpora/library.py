"""Corpora: streamed, validated, content-addressed uploads and the built-in corpora, stored under data_dir."""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from chargpt.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from chargpt.server.tenancy.principal import (
    DEFAULT_TENANT,
    SHARED_OWNER,
    check_changeable,
    check_visible,
    current_principal,
)
from trainer_service.corpora import builtin
from trainer_service.store import Store
from trainer_service.store_records import CorpusRecord

log = logging.getLogger(__name__)
NAME_PATTERN = re.compile(r"[A-Za-z0-9 ._-]{1,128}")
MAX_DESCRIPTION_CHARS = 1024
TRAIN_FRACTION = 0.9
# A corpus needs enough text that its last 10% (the validation split) holds at least 100 characters:
# a few windows of a small context. Jobs additionally need each split longer than their block size.
MIN_CORPUS_CHARS = 1000


def split_sizes(num_chars: int) -> tuple[int, int]:
    """(train, val) characters: the first 90% and the last 10%."""
    train = int(num_chars * TRAIN_FRACTION)
    return train, num_chars - train


def corpus_key(owner: str, sha: str) -> str:
    """A corpus's id: its text's sha256, namespaced per tenant so identical uploads of two tenants neither
    collide nor reveal each other (the default tenant and built-ins keep the bare sha256, as before tenants)."""
    if owner in (DEFAULT_TENANT, SHARED_OWNER):
        return sha
    return hashlib.sha256(f"{owner}\n{sha}".encode()).hexdigest()


def validate_header(name: str, description: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgumentError("header.name", "must be 1-128 characters of letters, digits, space, '.', "
                                   f"'_' or '-' (got {name[:40]!r}{'…' if len(name) > 40 else ''})")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgumentError("header.description",
                                   f"at most {MAX_DESCRIPTION_CHARS} characters (got {len(description)})")


class _UploadWriter:
    """Streams chunks to a temporary file while hashing, UTF-8 decoding and counting characters."""

    def __init__(self, path: Path, limit: int, quota: Callable[[int], None] | None = None) -> None:
        self.path, self.limit, self.quota = path, limit, quota
        self._file = open(path, "wb")  # noqa: SIM115 - closed in finish/discard
        self._sha = hashlib.sha256()
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.size = 0
        self.num_chars = 0
        self.vocabulary: set[str] = set()

    def write(self, data: bytes, final: bool = False) -> None:
        if self.size + len(data) > self.limit:
            raise ResourceExhaustedError(f"corpus exceeds the upload limit of {self.limit} bytes; nothing stored")
        if self.quota is not None and data:
            self.quota(self.size + len(data))  # the tenant's stored bytes: refused before anything is kept
        pending = len(self._decoder.getstate()[0])
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            offset = self.size - pending + exc.start
            raise InvalidArgumentError("data", f"corpus is not valid UTF-8: bad byte at offset {offset} "
                                       f"({exc.reason})") from None
        self.size += len(data)
        self.num_chars += len(text)
        self.vocabulary.update(text)
        self._sha.update(data)
        self._file.write(data)

    def finish(self) -> str:
        """Flush to disk; returns the sha256."""
        self.write(b"", final=True)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._sha.hexdigest()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class CorpusLibrary:
    """Uploaded and built-in corpora: text files named by sha256 under data_dir/corpora, rows in the store."""

    def __init__(self, store: Store, root: Path, max_upload_bytes: int) -> None:
        self.store, self.root, self.max_upload_bytes = store, root, max_upload_bytes
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".upload-*"):  # left by a server killed mid-upload
            stale.unlink(missing_ok=True)
        self._builtins_ready: asyncio.Task[None] | None = None

    async def upload(self, name: str, description: str, chunks: AsyncIterator[bytes], owner: str = DEFAULT_TENANT,
                     quota: Callable[[int], None] | None = None) -> tuple[CorpusRecord, bool]:
        """Store a corpus for `owner`; `quota(size)` raises when `size` more bytes would exceed its quota."""
        validate_header(name, description)
        writer = _UploadWriter(self.root / f".upload-{uuid.uuid4().hex}", self.max_upload_bytes, quota)
        try:
            async for data in chunks:
                await asyncio.to_thread(writer.write, data)
            sha = await asyncio.to_thread(writer.finish)
        except BaseException:
            writer.discard()
            raise
        try:
            check_trainable(writer.num_chars)
            record = self._record(sha, name, description, writer.size, writer.num_chars,
                                  "".join(sorted(writer.vocabulary)), owner=owner)
            await asyncio.to_thread(self._place, writer.path, record)
        finally:
            writer.path.unlink(missing_ok=True)
        return self.store.put_corpus(record)

    def _record(self, sha: str, name: str, description: str, size: int, num_chars: int, vocabulary: str,
                owner: str) -> CorpusRecord:
        train, val = split_sizes(num_chars)
        corpus_id = corpus_key(owner, sha)
        return CorpusRecord(corpus_id=corpus_id, name=name, description=description, size_bytes=size,
                            num_chars=num_chars, vocabulary=vocabulary, train_chars=train, val_chars=val,
                            builtin=owner == SHARED_OWNER, created=time.time(),
                            path=str(self.root / f"{corpus_id}.txt"), owner=owner, sha256=sha)

    @staticmethod
    def _place(tmp: Path, record: CorpusRecord) -> None:
        """Rename the finished temp file into its content address (identical content may already be there)."""
        target = Path(record.path)
        if target.exists() and target.stat().st_size == record.size_bytes:
            return
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # ---- built-ins

    def start_builtins(self) -> None:
        """Materialise the built-in corpora in the background (text is generated offline, ~1 s)."""
        if self._builtins_ready is None:
            self._builtins_ready = asyncio.create_task(asyncio.to_thread(self._materialise_builtins))

    async def builtins_ready(self) -> None:
        if self._builtins_ready is not None:
            await asyncio.shield(self._builtins_ready)

    def _materialise_builtins(self) -> None:
        for name in builtin.builtin_corpus_names():
            try:
                self._materialise(name)
            except builtin.BuiltinCorpusUnavailable as exc:
                log.warning("%s", exc)  # listed only where its source package is installed
            except Exception:  # one broken built-in must not hide the others or the uploads
                log.exception("could not materialise built-in corpus %r", name)

    def _materialise(self, name: str) -> None:
        text = builtin.build_builtin_corpus(name)
        data = text.encode("utf-8")
        sha = hashlib.sha256(data).hexdigest()
        if self.store.get_corpus(sha) is not None:
            return
        record = self._record(sha, name, builtin.BUILTIN_CORPORA[name].description, len(data),
                              len(text), "".join(sorted(set(text))), owner=SHARED_OWNER)
        tmp = self.root / f".upload-{uuid.uuid4().hex}"
        tmp.write_bytes(data)
        try:
            self._place(tmp, record)
        finally:
            tmp.unlink(missing_ok=True)
        self.store.put_corpus(record)

    # ---- lookups

    async def resolve(self, corpus_id: str, field: str = "corpus_id") -> CorpusRecord:
        """A corpus the caller may see by id, or a built-in by name; NOT_FOUND otherwise (another tenant's too)."""
        if not corpus_id:
            raise InvalidArgumentError(field, "required: a corpus id or a built-in corpus name")
        record = self.store.get_corpus(corpus_id)
        if record is None and corpus_id in builtin.BUILTIN_CORPORA:
            await self.builtins_ready()
            record = self.store.builtin_corpus_by_name(corpus_id)
        if record is None:
            raise NotFoundError(f"corpus {corpus_id!r} not found")
        check_visible(record.owner, f"corpus {corpus_id!r}")
        return record

    async def list(self) -> list[CorpusRecord]:
        """The corpora the caller may see: its own and the built-ins (an admin: all)."""
        await self.builtins_ready()
        caller = current_principal()
        return self.store.list_corpora(None if caller.is_admin else [caller.tenant, SHARED_OWNER])

    async def delete(self, corpus_id: str) -> CorpusRecord:
        record = await self.resolve(corpus_id)
        if record.builtin:
            raise FailedPreconditionError(f"corpus {record.name!r} is built in and cannot be deleted")
        check_changeable(record.owner, f"corpus {corpus_id!r}")
        if self.store.delete_corpus_if_unused(record.corpus_id) is None:
            raise FailedPreconditionError(f"corpus {record.corpus_id} is used by a queued or running job; "
                                          "cancel the job first")
        Path(record.path).unlink(missing_ok=True)
        return record


def check_trainable(num_chars: int) -> None:
    if num_chars == 0:
        raise InvalidArgumentError("data", "corpus is empty")
    if num_chars < MIN_CORPUS_CHARS:
        _, val = split_sizes(num_chars)
        raise InvalidArgumentError("data", f"corpus too small to train on: {num_chars} characters (validation "
                                   f"split {val}); at least {MIN_CORPUS_CHARS} characters are needed so that "
                                   "the last 10% used for validation holds at least 100")
