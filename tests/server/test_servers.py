"""Both servers start in-process on port 0, register every v1 RPC, answer health and list themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chargpt.server.serving import ManagedServer
from chargpt.v1 import inference_pb2, trainer_pb2
from inference_service.server import create_server as create_inference
from inference_service.settings import InferenceSettings
from trainer_service.server import create_server as create_trainer
from trainer_service.settings import TrainerSettings

SERVICES = [trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
            inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]]


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[dict[str, int]]:
    trainer, trainer_port = await create_trainer(TrainerSettings(port=0, data_dir=tmp_path / "t", device="cpu"))
    inference, inference_port = await create_inference(
        InferenceSettings(port=0, models_dir=tmp_path / "m", device="cpu"))
    started: list[ManagedServer] = [trainer, inference]
    for s in started:
        await s.start()
    yield {"chargpt.v1.TrainerService": trainer_port, "chargpt.v1.InferenceService": inference_port}
    for s in started:
        await s.stop(0)


async def test_every_rpc_is_registered(servers: dict[str, int]) -> None:
    for service in SERVICES:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{servers[service.full_name]}") as channel:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                code = await _call_raw(channel, path, method.client_streaming, method.server_streaming)
                # Empty bytes decode to the default request; any answer but "Method not found" proves the
                # handler is registered (not-yet-built ones answer UNIMPLEMENTED).
                assert code is not None, path


async def _call_raw(channel: grpc.aio.Channel, path: str, client_streaming: bool,
                    server_streaming: bool) -> grpc.StatusCode | None:
    identity = lambda b: b  # noqa: E731 - raw bytes in and out
    try:
        if client_streaming:
            call = channel.stream_unary(path, request_serializer=identity, response_deserializer=identity)
            await call(iter([]), timeout=10)
        elif server_streaming:
            stream = channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)
            async for _ in stream(b"", timeout=10):
                break
        else:
            await channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)(
                b"", timeout=10)
    except grpc.aio.AioRpcError as err:
        assert "Method not found" not in (err.details() or ""), f"{path} is not registered"
        return err.code()
    return grpc.StatusCode.OK


async def test_unknown_method_is_detected(servers: dict[str, int]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['chargpt.v1.TrainerService']}") as channel:
        with pytest.raises(AssertionError, match="not registered"):
            await _call_raw(channel, "/chargpt.v1.TrainerService/NoSuchMethod", False, False)


async def test_health_reports_serving(servers: dict[str, int]) -> None:
    for name, port in servers.items():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", name):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(servers: dict[str, int]) -> None:
    for name, port in servers.items():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5):
                listed = {s.name for s in reply.list_services_response.service}
                break
            assert {name, "grpc.health.v1.Health"} <= listed


async def test_trainer_answers_device_info(servers: dict[str, int]) -> None:
    from chargpt.v1 import trainer_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['chargpt.v1.TrainerService']}") as channel:
        reply = await trainer_pb2_grpc.TrainerServiceStub(channel).GetDeviceInfo(
            trainer_pb2.GetDeviceInfoRequest(), timeout=10)
    assert reply.device.type == "cpu" and reply.auto_model.n_layer >= 1 and "small" in reply.presets
