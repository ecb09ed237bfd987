"""First use within default deadlines (issue 23): unload returns promptly and a model's first load does not wait
for the host's decode calibration; both through a real server and the real client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from chargpt_client import AsyncInferenceClient, ClientOptions, NotFound

from chargpt.v1 import inference_pb2
from inference_service.engine.model_runner import ModelRunner

from .conftest import ServerFactory, write_checkpoint
from .test_lifecycle import _until

Req = inference_pb2.GenerateRequest


@pytest.fixture
def held_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every engine step waits for the event: a request stays in flight, however fast the host, until it is set."""
    release = threading.Event()
    real = ModelRunner.execute

    def held(self: ModelRunner, scheduled: Any) -> Any:
        release.wait(60)
        return real(self, scheduled)

    monkeypatch.setattr(ModelRunner, "execute", held)
    yield release
    release.set()


async def test_unload_answers_before_the_callers_deadline_and_in_flight_requests_finish(
        make_server: ServerFactory, held_steps: threading.Event) -> None:
    """Unloading waited 31 s for an in-flight request, past the client's 30 s deadline: now it waits at most
    unload_wait_seconds (5 s by default) and never past the caller's deadline; the request then finishes."""
    s = await make_server()
    write_checkpoint(s.models_dir / "tiny")
    await s.load("tiny", "tiny")
    stream = s.stub.GenerateStream(Req(model="tiny", prompt="a", max_new_tokens=20), timeout=120)
    await _until(lambda: s.server.registry.models["tiny"].in_flight == 1)
    address = f"127.0.0.1:{s.port}"
    async with AsyncInferenceClient(address, ClientOptions(timeout=3.0)) as client:
        await client.unload_model("tiny")  # DEADLINE_EXCEEDED before: the request is held in flight
        model = await client.get_model("tiny")
        assert model.state == "UNLOADING"
        again = await s.stub.UnloadModel(inference_pb2.UnloadModelRequest(name="tiny"), timeout=2.5)
        assert again.requests_in_flight == 1
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await s.load("tiny", "tiny")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        held_steps.set()
        messages = [m async for m in stream]
        assert len("".join(m.text for m in messages)) == 20  # finished, not cancelled
        assert messages[-1].summary.finish_reason == inference_pb2.FINISH_REASON_LENGTH
        await _until(lambda: "tiny" not in s.server.registry.models)
        with pytest.raises(NotFound):
            await client.get_model("tiny")
        write_checkpoint(s.models_dir / "idle")
        await client.load_model("idle", checkpoint_path="idle")
        done = await s.stub.UnloadModel(inference_pb2.UnloadModelRequest(name="idle"), timeout=5)
        assert done.requests_in_flight == 0 and "idle" not in s.server.registry.models  # freed before replying
