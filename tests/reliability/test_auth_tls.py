"""Bearer tokens on every RPC of both services, TLS/mTLS on the inference service, and the client and CLI over both."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from chargpt_client import ClientOptions, InferenceClient, RetryPolicy, TlsOptions, TrainerClient, Unauthenticated
from google.protobuf import descriptor, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chargpt.server.tenancy.interceptor import TenantInterceptor
from chargpt.server.tenancy.keys import KeyStore
from chargpt.v1 import common_pb2, inference_pb2, inference_pb2_grpc, trainer_pb2
from tests.client.conftest import ServerThread, inference_factory, trainer_factory
from tests.inference_service.conftest import Served, write_checkpoint
from tests.support.certs import Pki, make_pki
from tests.support.fake_trainer import CheckpointTrainer, serve_trainer

TOKEN = "correct-horse-battery-staple"
ROOT = Path(__file__).resolve().parents[2]
SERVICES = [trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
            inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]]
METHODS = [(service, method) for service in SERVICES for method in service.methods]


@dataclass
class Secured:
    trainer: str
    inference: str
    pki: Pki

    def tls_address(self, address: str) -> str:
        return "localhost:" + address.rsplit(":", 1)[1]  # the server certificate names localhost


@pytest.fixture(scope="module")
def secured(server_thread: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Secured:
    """Both services with token auth and mutual TLS, plus plaintext token-only twins for raw-stub checks."""
    root = tmp_path_factory.mktemp("secured")
    pki = make_pki(root / "pki")
    tls = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key, "tls_client_ca_file": pki.ca_cert}
    (root / "models").mkdir()
    write_checkpoint(root / "models" / "tiny")
    _, trainer = server_thread.start(trainer_factory(root / "trainer", builtin_corpora=False, auth_token=TOKEN,
                                                     **tls))
    _, inference = server_thread.start(inference_factory(root / "models", auth_token=TOKEN, **tls))
    return Secured(trainer, inference, pki)


@pytest.fixture(scope="module")
def token_only(server_thread: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("token")
    _, trainer = server_thread.start(trainer_factory(root / "trainer", builtin_corpora=False, auth_token=TOKEN))
    _, inference = server_thread.start(inference_factory(root / "models", auth_token=TOKEN))
    return {"chargpt.v1.TrainerService": trainer, "chargpt.v1.InferenceService": inference}


async def _call(channel: grpc.aio.Channel, method: descriptor.MethodDescriptor,
                metadata: list[tuple[str, str]] | None) -> grpc.StatusCode:
    """Call any method with a default request; the final status code."""
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    kwargs: dict[str, Any] = {"request_serializer": request_class.SerializeToString,
                              "response_deserializer": response_class.FromString}
    try:
        if method.client_streaming:
            async def requests() -> AsyncIterator[Any]:
                yield request_class()
            if method.server_streaming:
                async for _ in channel.stream_stream(path, **kwargs)(requests(), metadata=metadata, timeout=10):
                    pass
            else:
                await channel.stream_unary(path, **kwargs)(requests(), metadata=metadata, timeout=10)
        elif method.server_streaming:
            async for _ in channel.unary_stream(path, **kwargs)(request_class(), metadata=metadata, timeout=10):
                pass
        else:
            await channel.unary_unary(path, **kwargs)(request_class(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s.name}.{m.name}" for s, m in METHODS])
async def test_every_rpc_needs_the_token(token_only: dict[str, str], service: descriptor.ServiceDescriptor,
                                         method: descriptor.MethodDescriptor) -> None:
    async with grpc.aio.insecure_channel(token_only[service.full_name]) as channel:
        for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", TOKEN)],
                         [("authorization", f"Bearer {TOKEN}x")], [("x-token", f"Bearer {TOKEN}")]):
            assert await _call(channel, method, metadata) is grpc.StatusCode.UNAUTHENTICATED, metadata
        # the right token reaches the handler, whatever it then says about an empty request
        assert await _call(channel, method, [("authorization", f"Bearer {TOKEN}")]) \
            is not grpc.StatusCode.UNAUTHENTICATED


async def test_health_stays_open_on_both(token_only: dict[str, str]) -> None:
    for address in token_only.values():
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_inference_over_mutual_tls_with_raw_stubs(secured: Secured) -> None:
    pki, address = secured.pki, secured.tls_address(secured.inference)
    token = [("authorization", f"Bearer {TOKEN}")]
    full = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes(), pki.client_key.read_bytes(),
                                        pki.client_cert.read_bytes())
    async with grpc.aio.secure_channel(address, full) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        assert (await stub.ListModels(inference_pb2.ListModelsRequest(), metadata=token, timeout=10)).models == []
        with pytest.raises(grpc.aio.AioRpcError) as err:  # TLS is not a substitute for the token
            await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    for credentials in (grpc.ssl_channel_credentials(pki.ca_cert.read_bytes()),  # no client certificate
                        grpc.ssl_channel_credentials()):  # system roots do not trust the test CA
        async with grpc.aio.secure_channel(address, credentials) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await inference_pb2_grpc.InferenceServiceStub(channel).ListModels(
                    inference_pb2.ListModelsRequest(), metadata=token, timeout=10)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(secured.inference) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inference_pb2_grpc.InferenceServiceStub(channel).ListModels(
                inference_pb2.ListModelsRequest(), metadata=token, timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_client_library_over_mtls_and_token_on_both_services(secured: Secured) -> None:
    pki = secured.pki
    tls = TlsOptions.from_files(pki.ca_cert, pki.client_cert, pki.client_key)
    good = ClientOptions(token=TOKEN, tls=tls, timeout=30)
    with TrainerClient(secured.tls_address(secured.trainer), good) as trainer:
        assert trainer.device_info().device.type == "cpu"
    with InferenceClient(secured.tls_address(secured.inference), good) as inference:
        model = inference.load_model("tiny", checkpoint_path="tiny")
        assert model.model.name == "tiny"
        assert len(inference.generate("tiny", "a", max_new_tokens=5, seed=1).text) == 5
    bad = ClientOptions(token="nope", tls=tls, timeout=30, retry=RetryPolicy(max_attempts=1))
    with TrainerClient(secured.tls_address(secured.trainer), bad) as trainer, pytest.raises(Unauthenticated):
        trainer.device_info()


def _cli(secured: Secured, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    pki = secured.pki
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{ROOT}:{ROOT / 'client'}",
           "CHARGPT_TRAINER_ADDRESS": secured.tls_address(secured.trainer),
           "CHARGPT_INFERENCE_ADDRESS": secured.tls_address(secured.inference), "CHARGPT_TOKEN": token}
    flags = ["--tls-ca", str(pki.ca_cert), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    return subprocess.run([sys.executable, "-m", "chargpt_client.cli", *args, *flags], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.slow
def test_cli_over_mtls_and_token(secured: Secured) -> None:
    device = _cli(secured, "device", "--json")
    assert device.returncode == 0, device.stderr
    assert '"cpu"' in device.stdout
    models = _cli(secured, "models", "list", "--json")
    assert models.returncode == 0, models.stderr
    denied = _cli(secured, "device", token="wrong")
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr


async def test_inference_loads_from_a_mutual_tls_trainer_with_a_token(make_server: Any, secured: Secured,
                                                                      tmp_path: Path) -> None:
    """The inference service's own trainer channel speaks TLS and mTLS (trainer_tls_* settings) and sends its token."""
    pki = secured.pki
    fake = CheckpointTrainer(write_checkpoint(tmp_path / "trainer-side" / "best", seed=2))
    credentials = grpc.ssl_server_credentials([(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
                                              root_certificates=pki.ca_cert.read_bytes(), require_client_auth=True)
    trainer, port = await serve_trainer(fake, [TenantInterceptor(KeyStore(None, TOKEN))], credentials)
    ref = inference_pb2.TrainerCheckpointRef(job_id="job1", kind=common_pb2.CHECKPOINT_KIND_BEST)
    request = inference_pb2.LoadModelRequest(name="remote", trainer_checkpoint=ref)
    tls = {"trainer_tls_ca_file": pki.ca_cert, "trainer_tls_cert_file": pki.client_cert,
           "trainer_tls_key_file": pki.client_key}
    try:
        for overrides, code in (({}, grpc.StatusCode.UNAVAILABLE),  # plaintext to a TLS trainer
                                ({**tls, "trainer_tls_cert_file": None, "trainer_tls_key_file": None},
                                 grpc.StatusCode.UNAVAILABLE),  # no client certificate
                                (tls, grpc.StatusCode.OK)):
            s: Served = await make_server(trainer_address=f"localhost:{port}", trainer_auth_token=TOKEN, **overrides)
            try:
                reply = await s.stub.LoadModel(request, timeout=60)
                assert reply.model.state == inference_pb2.MODEL_STATE_READY
                got = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                got = err.code()
            assert got is code, overrides
        assert fake.downloads == 1
    finally:
        await trainer.stop(0)
