"""Retries, deadlines, bearer tokens, TLS and round-robin, against real servers and a counting test servicer."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from chargpt_client import (
    ClientOptions,
    DeadlineExceeded,
    InferenceClient,
    RetryPolicy,
    TlsOptions,
    TrainerClient,
    Unauthenticated,
    Unavailable,
)

from chargpt.v1 import inference_pb2, inference_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.client.conftest import FAST_RETRY, ServerThread, inference_factory, write_checkpoint


class FlakyServicer(inference_pb2_grpc.InferenceServiceServicer, trainer_pb2_grpc.TrainerServiceServicer):
    """Answers UNAVAILABLE to the first `failures` calls of each method and counts every call."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: Counter[str] = Counter()

    async def _maybe_fail(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.calls[method] += 1
        if self.calls[method] <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

    async def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        await self._maybe_fail("ListModels", context)
        return inference_pb2.ListModelsResponse()

    async def UnloadModel(self, request, context):  # type: ignore[no-untyped-def]
        await self._maybe_fail("UnloadModel", context)
        return inference_pb2.UnloadModelResponse()

    async def GetModel(self, request, context):  # type: ignore[no-untyped-def]
        await asyncio.sleep(2.0)
        return inference_pb2.GetModelResponse()

    async def CreateTrainingJob(self, request, context):  # type: ignore[no-untyped-def]
        await self._maybe_fail("CreateTrainingJob", context)
        return trainer_pb2.CreateTrainingJobResponse()

    async def GetTrainingJob(self, request, context):  # type: ignore[no-untyped-def]
        await self._maybe_fail("GetTrainingJob", context)
        return trainer_pb2.GetTrainingJobResponse(job=trainer_pb2.TrainingJob(job_id=request.job_id))


def start_flaky(server_thread: ServerThread, failures: int) -> tuple[FlakyServicer, str]:
    servicer = FlakyServicer(failures)

    async def factory() -> tuple[object, int]:
        server = grpc.aio.server()
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        return server, port

    _, address = server_thread.start(factory)
    return servicer, address


def test_idempotent_calls_are_retried_and_others_are_not(server_thread: ServerThread) -> None:
    servicer, address = start_flaky(server_thread, failures=2)
    with InferenceClient(address, FAST_RETRY) as inference, TrainerClient(address, FAST_RETRY) as trainer:
        assert inference.list_models() == []
        assert trainer.get_job("j1").job_id == "j1"
        with pytest.raises(Unavailable, match="warming up"):
            inference.unload_model("m")
        with pytest.raises(Unavailable):
            trainer.create_job("shakespeare")
    assert servicer.calls == {"ListModels": 3, "GetTrainingJob": 3, "UnloadModel": 1, "CreateTrainingJob": 1}


def test_retries_give_up_after_max_attempts(server_thread: ServerThread) -> None:
    servicer, address = start_flaky(server_thread, failures=100)
    options = ClientOptions(retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))
    with InferenceClient(address, options) as client, pytest.raises(Unavailable):
        client.list_models()
    assert servicer.calls["ListModels"] == 3


def test_deadline_per_call_and_per_client(server_thread: ServerThread) -> None:
    _, address = start_flaky(server_thread, failures=0)
    with InferenceClient(address, ClientOptions(timeout=0.2)) as client, pytest.raises(DeadlineExceeded):
        client.get_model("slow")
    with InferenceClient(address, ClientOptions(timeout=60)) as client, pytest.raises(DeadlineExceeded):
        client.get_model("slow", timeout=0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_server_that_starts_late(server_thread: ServerThread, tmp_path: Path) -> None:
    port = _free_port()
    timer = threading.Timer(1.0, lambda: server_thread.start(inference_factory(tmp_path, port=port)))
    options = ClientOptions(timeout=30, retry=RetryPolicy(max_attempts=12, initial_backoff=0.1, max_backoff=1.0))
    started = time.monotonic()
    with InferenceClient(f"127.0.0.1:{port}", options) as client:
        with pytest.raises(Unavailable):  # not retried: nothing is listening yet
            client.unload_model("m")
        timer.start()
        assert client.list_models() == []  # retried until the server is up
    assert time.monotonic() - started >= 0.9
    timer.join()


def test_bearer_token(server_thread: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, address = server_thread.start(inference_factory(tmp_path, auth_token="s3cret"))
    with InferenceClient(address, ClientOptions()) as client, pytest.raises(Unauthenticated):
        client.list_models()
    with InferenceClient(address, ClientOptions(token="s3cret")) as client:
        assert client.list_models() == []
    monkeypatch.setenv("CHARGPT_TOKEN", "s3cret")
    with InferenceClient(address) as client:
        assert client.list_models() == []


def test_mutual_tls(server_thread: ServerThread, tmp_path: Path) -> None:
    from tests.support.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    _, address = server_thread.start(inference_factory(
        tmp_path, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, tls_client_ca_file=pki.ca_cert))
    port = address.rsplit(":", 1)[1]
    tls = TlsOptions.from_files(pki.ca_cert, pki.client_cert, pki.client_key)
    with InferenceClient(f"localhost:{port}", ClientOptions(tls=tls)) as client:
        assert client.list_models() == []
    no_client_cert = ClientOptions(tls=TlsOptions.from_files(pki.ca_cert), retry=RetryPolicy(max_attempts=1))
    with InferenceClient(f"localhost:{port}", no_client_cert) as client, pytest.raises(Unavailable):
        client.list_models()
    with pytest.raises(ValueError, match="both"):
        TlsOptions.from_files(pki.ca_cert, pki.client_cert)


def test_round_robin_spreads_calls_over_replicas(server_thread: ServerThread) -> None:
    replicas = [start_flaky(server_thread, failures=0) for _ in range(2)]
    target = "ipv4:" + ",".join(address for _, address in replicas)
    with InferenceClient(target, ClientOptions(round_robin=True)) as client:
        for _ in range(20):
            client.list_models()
    calls = [servicer.calls["ListModels"] for servicer, _ in replicas]
    # Strict alternation starts only once both subchannels are connected, so the first calls may all land on
    # one replica; pick_first would send all 20 to one, round-robin gives each a real share.
    assert sum(calls) == 20 and min(calls) >= 5, calls


def test_round_robin_with_real_servers(server_thread: ServerThread, tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "tiny")
    addresses = [server_thread.start(inference_factory(tmp_path))[1] for _ in range(2)]
    options = ClientOptions(round_robin=True)
    with InferenceClient("ipv4:" + ",".join(addresses), options) as client:
        client.load_model("tiny", checkpoint_path="tiny")  # lands on one replica...
        loaded = [InferenceClient(a).list_models() for a in addresses]
    assert sorted(len(m) for m in loaded) == [0, 1]  # ...because the balancer picked exactly one
