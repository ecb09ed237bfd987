"""First use within default deadlines (issue 23): unload returns promptly and a model's first load does not wait
for the host's decode calibration; both through a real server and the real client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from chargpt_client import AsyncInferenceClient, ClientOptions, NotFound

from chargpt.v1 import common_pb2, inference_pb2
from inference_service import serving_choices
from inference_service.decode_policy import DEFAULT_PARALLEL_FROM
from inference_service.engine import Engine
from inference_service.engine.model_runner import ModelRunner
from inference_service.serving_choices import DecodeCalibration

from .conftest import ServerFactory, write_checkpoint
from .test_calibration import B16, BF16_WINS, F32, MIXED, t
from .test_lifecycle import _until

Req = inference_pb2.GenerateRequest
BF16_BIG = {F32: 10.0, MIXED: 7.0, B16: 9.0}  # bf16 weights with a float32 KV cache win at the big batch


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


def _engine(s: Any, name: str) -> Engine:
    engine: Engine | None = s.server.registry.models[name].engine
    assert engine is not None
    return engine


@pytest.fixture
def held_calibration(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The decode calibration waits for the event, then reports a host where bf16 weights win and a lone row is
    faster on transposed copies (fixed figures: the test does not depend on how fast this host is)."""
    release = threading.Event()

    def measured(model: Any, big_batch: int, max_threads: int, race: bool = True) -> DecodeCalibration:
        release.wait(60)
        return DecodeCalibration(big_batch=64, max_threads=2, dtypes_big={k: t(v) for k, v in BF16_BIG.items()},
                                 ladder={k: t(v) for k, v in BF16_WINS.items()},
                                 lone={"plain": t(4.0), "transposed": t(3.0)})

    monkeypatch.setattr(serving_choices, "measure_decode", measured)
    yield release
    release.set()


async def test_first_load_serves_with_the_defaults_while_the_host_is_measured(
        make_server: ServerFactory, held_calibration: threading.Event, tmp_path: Path) -> None:
    """The first LoadModel of a shape waited for the decode calibration (past the client's 30 s deadline on a busy
    host): it answers at once with the defaults in force (GetModel says PENDING), and the measured plan takes
    over when the calibration is done."""
    s = await make_server(calibration_dir=tmp_path / "empty", dtype="auto", torch_threads=2)
    write_checkpoint(s.models_dir / "tiny")
    async with AsyncInferenceClient(f"127.0.0.1:{s.port}", ClientOptions(timeout=5.0)) as client:
        loaded = (await client.load_model("tiny", checkpoint_path="tiny")).model  # blocked on main: deadline
        assert (loaded.state, loaded.calibration) == ("READY", "pending")
        assert (loaded.dtype, loaded.kv_cache_dtype, loaded.narrow_decode_from) == ("float32", "float32", 1)
        assert loaded.parallel_decode_from == DEFAULT_PARALLEL_FROM and loaded.split_decode_from == 0
        assert len((await client.generate("tiny", "a", max_new_tokens=5)).text) == 5  # served meanwhile
        assert not _engine(s, "tiny").policy.lone_transposed
        held_calibration.set()
        await _until(lambda: s.server.registry.models["tiny"].calibration.value != "pending")
        measured = await client.get_model("tiny")
        assert (measured.calibration, measured.dtype, measured.kv_cache_dtype) == ("measured", "bfloat16", "float32")
        runner = _engine(s, "tiny").model_runner  # the plan takes the lone row's layout; measured for float32 only,
        assert runner.policy.lone_transposed and not runner.decoder.transposed  # so bf16 weights get no copies
        assert len((await client.generate("tiny", "a", max_new_tokens=5)).text) == 5
        again = await make_server(calibration_dir=tmp_path / "empty", dtype="auto", torch_threads=2)
        write_checkpoint(again.models_dir / "tiny")
        reloaded = (await again.load("tiny", "tiny")).model  # cached now: measured from the start
        assert reloaded.calibration == common_pb2.CALIBRATION_STATE_MEASURED and reloaded.dtype == "bfloat16"
