"""The exception-to-status table and bearer-token auth, through a real aio server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chargpt import errors
from chargpt.server.errors import status_for
from chargpt.v1 import trainer_pb2, trainer_pb2_grpc
from trainer_service.server import create_server
from trainer_service.settings import TrainerSettings


@pytest.mark.parametrize(("exc", "code"), [
    (errors.InvalidArgumentError("name", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.VocabularyError(["x"]), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError("gone"), grpc.StatusCode.NOT_FOUND),
    (errors.CheckpointNotFoundError("gone"), grpc.StatusCode.NOT_FOUND),
    (errors.CheckpointCorruptError("hash"), grpc.StatusCode.DATA_LOSS),
    (errors.CheckpointFormatError("v9"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AlreadyExistsError("x"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.ResourceExhaustedError("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.UnavailableError("later"), grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDeniedError("no"), grpc.StatusCode.PERMISSION_DENIED),
    (NotImplementedError(), grpc.StatusCode.UNIMPLEMENTED),
    (OSError(28, "No space left on device"), grpc.StatusCode.UNAVAILABLE),
    (RuntimeError("bug"), grpc.StatusCode.INTERNAL),
])
def test_status_table(exc: BaseException, code: grpc.StatusCode) -> None:
    assert status_for(exc) is code


def test_invalid_argument_names_the_field() -> None:
    assert str(errors.InvalidArgumentError("training.learning_rate", "must be > 0")).startswith(
        "training.learning_rate:")


@pytest.fixture
async def secured_port(tmp_path: Path) -> AsyncIterator[int]:
    server, port = await create_server(TrainerSettings(port=0, data_dir=tmp_path, device="cpu",
                                                       auth_token="s3cret"))
    await server.start()
    yield port
    await server.stop(0)


@pytest.mark.parametrize("metadata", [None, [("authorization", "Bearer wrong")], [("authorization", "s3cret")]])
async def test_missing_or_wrong_token_is_unauthenticated(secured_port: int,
                                                        metadata: list[tuple[str, str]] | None) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured_port}") as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetDeviceInfo(trainer_pb2.GetDeviceInfoRequest(), metadata=metadata, timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:  # streaming methods are guarded too
            async for _ in stub.WatchTrainingJob(trainer_pb2.WatchTrainingJobRequest(job_id="x"),
                                                 metadata=metadata, timeout=5):
                pass
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_right_token_passes_and_health_stays_open(secured_port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured_port}") as channel:
        reply = await trainer_pb2_grpc.TrainerServiceStub(channel).GetDeviceInfo(
            trainer_pb2.GetDeviceInfoRequest(), metadata=[("authorization", "Bearer s3cret")], timeout=5)
        assert reply.device.type == "cpu"
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
