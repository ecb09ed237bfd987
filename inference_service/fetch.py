"""Pulling a trainer job's checkpoint over DownloadCheckpoint into a local cache, verifying every byte.

Every chunk's sha256, every file's size and sha256 and the chunk order are checked; files land in a temporary
directory that is renamed into place only when all of them verify, so the cache never holds a partial copy.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from pathlib import Path
from typing import IO

import grpc

from chargpt import errors
from chargpt.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

JOB_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SAFE_FILE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
MAX_FILES = 16
MAX_TOTAL_BYTES = 8 << 30


def trainer_credentials(ca_file: Path | None, cert_file: Path | None,
                        key_file: Path | None) -> grpc.ChannelCredentials | None:
    """TLS credentials for the trainer channel (None: plaintext); a client certificate needs its key."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("trainer mutual TLS needs both trainer_tls_cert_file and trainer_tls_key_file")
    if ca_file is None and cert_file is None:
        return None
    return grpc.ssl_channel_credentials(ca_file.read_bytes() if ca_file else None,
                                        key_file.read_bytes() if key_file else None,
                                        cert_file.read_bytes() if cert_file else None)


async def download_checkpoint(address: str | None, token: str | None, job_id: str, kind: int, cache_root: Path,
                              chunk_size: int, credentials: grpc.ChannelCredentials | None = None) -> Path:
    """The local directory of the job's checkpoint, downloaded unless an identical copy is cached."""
    if not address:
        raise errors.FailedPreconditionError("no trainer_address is configured, so trainer checkpoints "
                                             "cannot be loaded")
    if not JOB_ID.match(job_id):
        raise errors.InvalidArgumentError("trainer_checkpoint.job_id", "must be 1-128 of letters, digits . _ -")
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    request = trainer_pb2.DownloadCheckpointRequest(job_id=job_id, kind=kind, chunk_size=chunk_size)  # type: ignore[arg-type]
    try:
        channel = (grpc.aio.secure_channel(address, credentials) if credentials is not None
                   else grpc.aio.insecure_channel(address))
        async with channel:
            stream = trainer_pb2_grpc.TrainerServiceStub(channel).DownloadCheckpoint(request, metadata=metadata)
            return await _receive(stream, job_id, cache_root)
    except grpc.aio.AioRpcError as err:
        raise _trainer_error(err) from None


def _trainer_error(err: grpc.aio.AioRpcError) -> errors.ChargptError:
    message = f"trainer DownloadCheckpoint failed: {err.code().name}: {err.details()}"
    code = err.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.NotFoundError(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgumentError("trainer_checkpoint", message)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return errors.UnavailableError(message)
    return errors.FailedPreconditionError(message)


async def _receive(stream: grpc.aio.UnaryStreamCall, job_id: str, cache_root: Path) -> Path:
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        raise errors.DataLossError("the trainer sent no checkpoint header") from None
    if first.WhichOneof("part") != "header":
        raise errors.DataLossError("the trainer's first message is not a checkpoint header")
    header = first.header
    files = _check_files(header)
    kind_name = common_pb2.CheckpointKind.Name(header.checkpoint.kind).removeprefix("CHECKPOINT_KIND_").lower()
    sha = header.checkpoint.weights_sha256
    name = f"{job_id}-{kind_name}-{sha[:16]}" if re.fullmatch(r"[0-9a-f]{64}", sha) else None
    cache_root.mkdir(parents=True, exist_ok=True)
    if name and (cache_root / name / "manifest.json").is_file():
        stream.cancel()  # an identical checkpoint is already cached
        return cache_root / name
    tmp = cache_root / f".download-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        await _write_files(iterator, files, tmp)
        final = cache_root / (name or f"{job_id}-{kind_name}-{uuid.uuid4().hex[:16]}")
        if final.exists():  # a concurrent download of the same checkpoint won
            shutil.rmtree(tmp)
        else:
            tmp.rename(final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_files(header: trainer_pb2.CheckpointArchiveHeader) -> list[trainer_pb2.CheckpointFile]:
    files = list(header.files)
    names = [f.name for f in files]
    if not files or len(files) > MAX_FILES or len(set(names)) != len(names):
        raise errors.DataLossError(f"the trainer's checkpoint header lists a bad set of files: {names[:20]}")
    for f in files:
        if not SAFE_FILE.match(f.name) or f.size_bytes < 0 or not re.fullmatch(r"[0-9a-f]{64}", f.sha256):
            raise errors.DataLossError(f"bad file entry in the trainer's checkpoint header: {f.name!r}")
    if sum(f.size_bytes for f in files) > MAX_TOTAL_BYTES:
        raise errors.ResourceExhaustedError("the trainer's checkpoint is larger than 8 GiB")
    return files


async def _write_files(iterator: object, files: list[trainer_pb2.CheckpointFile], directory: Path) -> None:
    """Write the chunks that follow the header, in order, verifying each chunk and each whole file."""
    expected = {f.name: f for f in files}
    written = dict.fromkeys(expected, 0)
    digests = {name: hashlib.sha256() for name in expected}
    handles: dict[str, IO[bytes]] = {}
    try:
        async for message in iterator:  # type: ignore[attr-defined]
            chunk = message.chunk
            if message.WhichOneof("part") != "chunk" or chunk.file_name not in expected:
                raise errors.DataLossError(f"unexpected message in the checkpoint stream ({chunk.file_name!r})")
            if chunk.offset != written[chunk.file_name]:
                raise errors.DataLossError(f"{chunk.file_name}: chunk at offset {chunk.offset}, expected "
                                           f"{written[chunk.file_name]}")
            if hashlib.sha256(chunk.data).hexdigest() != chunk.sha256:
                raise errors.DataLossError(f"{chunk.file_name}: chunk at offset {chunk.offset} fails its sha256")
            written[chunk.file_name] += len(chunk.data)
            if written[chunk.file_name] > expected[chunk.file_name].size_bytes:
                raise errors.DataLossError(f"{chunk.file_name}: more bytes than the header announced")
            digests[chunk.file_name].update(chunk.data)
            if chunk.file_name not in handles:
                handles[chunk.file_name] = open(directory / chunk.file_name, "wb")  # noqa: SIM115
            handles[chunk.file_name].write(chunk.data)
    finally:
        for handle in handles.values():
            handle.close()
    for name, entry in expected.items():
        if written[name] != entry.size_bytes:
            raise errors.DataLossError(f"{name}: received {written[name]} of {entry.size_bytes} bytes")
        if digests[name].hexdigest() != entry.sha256:
            raise errors.DataLossError(f"{name}: the file's sha256 does not match the header")
        if entry.size_bytes == 0:
            (directory / name).touch()
