"""TLS and mutual TLS on a real server, with certificates generated for the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chargpt.v1 import trainer_pb2, trainer_pb2_grpc
from tests.support.certs import Pki, make_pki
from trainer_service.server import create_server
from trainer_service.settings import TrainerSettings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _start(tmp_path: Path, pki: Pki, mutual: bool) -> AsyncIterator[int]:
    settings = TrainerSettings(port=0, data_dir=tmp_path, device="cpu", tls_cert_file=pki.server_cert,
                               tls_key_file=pki.server_key, tls_client_ca_file=pki.ca_cert if mutual else None)
    server, port = await create_server(settings)
    await server.start()
    yield port
    await server.stop(0)


@pytest.fixture
async def tls_port(tmp_path: Path, pki: Pki) -> AsyncIterator[int]:
    async for port in _start(tmp_path, pki, mutual=False):
        yield port


@pytest.fixture
async def mtls_port(tmp_path: Path, pki: Pki) -> AsyncIterator[int]:
    async for port in _start(tmp_path, pki, mutual=True):
        yield port


async def _device_info(port: int, credentials: grpc.ChannelCredentials) -> str:
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
        reply = await trainer_pb2_grpc.TrainerServiceStub(channel).GetDeviceInfo(
            trainer_pb2.GetDeviceInfoRequest(), timeout=10)
    return str(reply.device.type)


async def test_tls_with_the_right_ca(tls_port: int, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes())
    assert await _device_info(tls_port, creds) == "cpu"


async def test_plaintext_client_cannot_talk_to_tls_server(tls_port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await trainer_pb2_grpc.TrainerServiceStub(channel).GetDeviceInfo(trainer_pb2.GetDeviceInfoRequest(),
                                                                             timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate(mtls_port: int, pki: Pki) -> None:
    root = pki.ca_cert.read_bytes()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _device_info(mtls_port, grpc.ssl_channel_credentials(root_certificates=root))
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=pki.client_key.read_bytes(),
                                         certificate_chain=pki.client_cert.read_bytes())
    assert await _device_info(mtls_port, creds) == "cpu"


def test_half_configured_tls_is_refused(tmp_path: Path, pki: Pki) -> None:
    import asyncio

    settings = TrainerSettings(port=0, data_dir=tmp_path, device="cpu", tls_cert_file=pki.server_cert)
    with pytest.raises(ValueError, match="both"):
        asyncio.run(create_server(settings))
