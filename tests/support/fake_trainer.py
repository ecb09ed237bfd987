"""A stand-in trainer that serves one checkpoint directory over DownloadCheckpoint, honestly or maliciously."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from chargpt.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

# Maps a real file name to the name announced in the header and chunks (e.g. "../../x" for an attack).
Renamer = Callable[[str], str]


class CheckpointTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    """Serves `directory` as job "job1" in the requested chunk size; `rename` lets a test send hostile file
    names, and `corrupt` flips a byte of the first weights chunk after its checksum was computed."""

    def __init__(self, directory: Path, rename: Renamer | None = None) -> None:
        self.directory = directory
        self.rename: Renamer = rename or (lambda name: name)
        self.downloads = 0
        self.corrupt = False

    async def DownloadCheckpoint(self, request: trainer_pb2.DownloadCheckpointRequest,
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if request.job_id != "job1":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
        self.downloads += 1
        files = sorted(p for p in self.directory.iterdir() if p.is_file())
        weights_sha = hashlib.sha256((self.directory / "model.safetensors").read_bytes()).hexdigest()
        header = trainer_pb2.CheckpointArchiveHeader(
            checkpoint=trainer_pb2.Checkpoint(job_id="job1", kind=common_pb2.CHECKPOINT_KIND_BEST,
                                              weights_sha256=weights_sha),
            files=[trainer_pb2.CheckpointFile(name=self.rename(p.name), size_bytes=p.stat().st_size,
                                              sha256=hashlib.sha256(p.read_bytes()).hexdigest()) for p in files])
        yield trainer_pb2.DownloadCheckpointResponse(header=header)
        size = request.chunk_size or 1 << 20
        for path in files:
            data = path.read_bytes()
            for offset in range(0, len(data), size):
                piece = data[offset:offset + size]
                digest = hashlib.sha256(piece).hexdigest()
                if self.corrupt and path.name == "model.safetensors" and offset == 0:
                    piece = bytes([piece[0] ^ 1]) + piece[1:]
                yield trainer_pb2.DownloadCheckpointResponse(chunk=trainer_pb2.CheckpointChunk(
                    file_name=self.rename(path.name), offset=offset, data=piece, sha256=digest))


async def serve_trainer(servicer: trainer_pb2_grpc.TrainerServiceServicer,
                        interceptors: list[grpc.aio.ServerInterceptor] | None = None,
                        credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=interceptors or [])
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)
    port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials is not None
            else server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    return server, port
