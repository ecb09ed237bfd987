"""Pulling a trainer job's checkpoint over DownloadCheckpoint into a local cache, verifying every byte.

The shared CheckpointReceiver (chargpt.receiver, the same code the Python clients use) checks every chunk, file
name, size and sha256 and renames the directory into place only when all of them verify, so the cache never holds
a partial copy; its DataLossError and ResourceExhaustedError become this service's DATA_LOSS and
RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import grpc

from chargpt import errors
from chargpt.receiver import SHA256_HEX, CheckpointReceiver
from chargpt.v1 import trainer_pb2, trainer_pb2_grpc
from chargpt.wire.checkpoint_kinds import kind_name

JOB_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


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
    """Receive into the cache through the shared verifying receiver, unless the header names a copy that is
    already cached."""
    name: str | None = None
    cache_root.mkdir(parents=True, exist_ok=True)
    try:
        with CheckpointReceiver(cache_root) as receiver:
            async for message in stream:
                receiver.feed(message)
                if name is None and receiver.header is not None:
                    name, cacheable = _cache_name(job_id, receiver.header.checkpoint)
                    if cacheable and (cache_root / name / "manifest.json").is_file():
                        stream.cancel()  # an identical checkpoint is already cached
                        return cache_root / name
            return receiver.finish(name or "", if_exists="keep")  # "keep": a concurrent download of it won
    except (errors.DataLossError, errors.ResourceExhaustedError) as exc:
        raise type(exc)(f"trainer checkpoint download: {exc}") from None


def _cache_name(job_id: str, checkpoint: trainer_pb2.Checkpoint) -> tuple[str, bool]:
    """The cache directory's name, and whether it identifies the weights (so a cached copy can be reused)."""
    kind = kind_name(checkpoint.kind)
    sha = checkpoint.weights_sha256
    if SHA256_HEX.match(sha):
        return f"{job_id}-{kind}-{sha[:16]}", True
    return f"{job_id}-{kind}-{uuid.uuid4().hex[:16]}", False
