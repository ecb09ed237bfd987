"""Model lifecycle and request lifecycle: loads, unloads, health, cancellation, deadlines, queue limits, metrics."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chargpt.v1 import inference_pb2
from inference_service.registry import FAILED_LISTED

from .conftest import Served, write_checkpoint

Req = inference_pb2.GenerateRequest
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _health(s: Served, service: str) -> int:
    reply = await health_pb2_grpc.HealthStub(s.channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                               timeout=5)
    return int(reply.status)


async def test_load_describes_the_model_and_is_idempotent(served: Served) -> None:
    again = await served.load("tiny", "tiny")
    assert not again.loaded and again.model.state == inference_pb2.MODEL_STATE_READY
    m = (await served.stub.GetModel(inference_pb2.GetModelRequest(name="tiny"), timeout=5)).model
    assert m.source == "path:tiny" and m.config.n_embd == 32 and m.config.block_size == 32
    assert m.parameter_count > 0 and m.device == "cpu" and m.dtype == "float32" and len(m.weights_sha256) == 64
    assert m.training.corpus_name == "test" and m.training.step == 7 and m.vocabulary.startswith("\n")
    assert m.kv_cache_dtype == "float32" and m.parallel_decode_from == 0  # one torch thread: every batch uses it
    write_checkpoint(served.models_dir / "other", seed=1)
    assert await _code(served.load("tiny", "other")) == grpc.StatusCode.ALREADY_EXISTS
    listed = await served.stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5)
    assert [x.name for x in listed.models] == ["tiny"]
    assert served.metric("chargpt_inference_models_loaded") == 1
    assert served.metric("chargpt_inference_model_load_seconds_count", model="tiny") == 1


async def test_paths_outside_the_root_are_refused(served: Served, tmp_path: Any) -> None:
    write_checkpoint(tmp_path / "outside")
    assert await _code(served.load("x", "../outside")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(served.load("x", str(tmp_path / "outside"))) == grpc.StatusCode.PERMISSION_DENIED
    os.symlink(tmp_path / "outside", served.models_dir / "link")
    assert await _code(served.load("x", "link")) == grpc.StatusCode.PERMISSION_DENIED
    assert await _code(served.load("x", "missing")) == grpc.StatusCode.NOT_FOUND
    assert await _code(served.load("bad name!", "tiny")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(served.load("x", "tiny", dtype="float8")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(served.load("x", "tiny", device="tpu")) == grpc.StatusCode.INVALID_ARGUMENT


async def test_corrupt_checkpoint_fails_only_its_load(served: Served) -> None:
    path = write_checkpoint(served.models_dir / "broken", seed=2)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert await _code(served.load("broken", "broken")) == grpc.StatusCode.DATA_LOSS
    m = (await served.stub.GetModel(inference_pb2.GetModelRequest(name="broken"), timeout=5)).model
    assert m.state == inference_pb2.MODEL_STATE_FAILED and "sha256" in m.error
    assert await _code(served.stub.Generate(Req(model="broken", prompt="a"), timeout=5)) \
        == grpc.StatusCode.FAILED_PRECONDITION
    reply = await served.stub.Generate(Req(model="tiny", prompt="a", max_new_tokens=3), timeout=10)
    assert len(reply.text) == 3


async def test_health_per_model_and_unload_waits_for_in_flight(served: Served) -> None:
    assert await _health(served, "tiny") == SERVING
    assert await _health(served, "") == SERVING
    stream = served.stub.GenerateStream(Req(model="tiny", prompt="a", max_new_tokens=1000), timeout=60)
    first = await stream.read()
    assert first.text
    unload = asyncio.ensure_future(served.stub.UnloadModel(inference_pb2.UnloadModelRequest(name="tiny"),
                                                           timeout=60))
    await _until(lambda: served.server.registry.models["tiny"].state.name == "UNLOADING")
    assert not unload.done()
    assert await _health(served, "tiny") == NOT_SERVING
    m = (await served.stub.GetModel(inference_pb2.GetModelRequest(name="tiny"), timeout=5)).model
    assert m.state == inference_pb2.MODEL_STATE_UNLOADING
    assert await _code(served.stub.Generate(Req(model="tiny", prompt="a"), timeout=5)) \
        == grpc.StatusCode.UNAVAILABLE
    text = first.text
    while (message := await stream.read()) != grpc.aio.EOF:
        text += message.text
        if message.HasField("summary"):
            assert message.summary.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert len(text) == 1000
    await unload
    assert await _code(served.stub.GetModel(inference_pb2.GetModelRequest(name="tiny"), timeout=5)) \
        == grpc.StatusCode.NOT_FOUND
    assert await _health(served, "tiny") == NOT_SERVING
    assert await _code(served.stub.UnloadModel(inference_pb2.UnloadModelRequest(name="tiny"), timeout=5)) \
        == grpc.StatusCode.NOT_FOUND
    assert served.metric("chargpt_inference_models_loaded") == 0


async def test_cancelled_stream_frees_its_slot(served: Served) -> None:
    stream = served.stub.GenerateStream(Req(model="tiny", prompt="a", max_new_tokens=4000), timeout=60)
    await stream.read()
    assert served.metric("chargpt_inference_requests_running", model="tiny") == 1
    stream.cancel()
    await _until(lambda: served.metric("chargpt_inference_requests_running", model="tiny") == 0)
    await _until(lambda: served.metric("chargpt_inference_request_failure_total", model="tiny",
                                       reason="cancelled") == 1)
    assert served.server.registry.models["tiny"].in_flight == 0


async def test_deadline_exceeded_drops_the_request(served: Served) -> None:
    call = served.stub.Generate(Req(model="tiny", prompt="a", max_new_tokens=4000), timeout=0.3)
    assert await _code(call) == grpc.StatusCode.DEADLINE_EXCEEDED
    await _until(lambda: served.metric("chargpt_inference_requests_running", model="tiny") == 0)
    assert served.metric("chargpt_inference_request_failure_total", model="tiny", reason="deadline_exceeded") == 1
    reply = await served.stub.Generate(Req(model="tiny", prompt="a", max_new_tokens=3), timeout=10)
    assert len(reply.text) == 3


async def test_full_queue_is_resource_exhausted(make_server: Any) -> None:
    s: Served = await make_server(max_batch_size=1, max_queue=1)
    write_checkpoint(s.models_dir / "tiny")
    await s.load("tiny", "tiny")
    running = s.stub.GenerateStream(Req(model="tiny", prompt="a", max_new_tokens=4000), timeout=60)
    await running.read()
    queued = s.stub.GenerateStream(Req(model="tiny", prompt="b", max_new_tokens=5), timeout=60)
    await _until(lambda: s.metric("chargpt_inference_requests_waiting", model="tiny") == 1)
    assert await _code(s.stub.Generate(Req(model="tiny", prompt="c"), timeout=10)) \
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert s.metric("chargpt_inference_request_failure_total", model="tiny", reason="queue_full") == 1
    running.cancel()
    text = "".join([m.text async for m in queued])
    assert len(text) == 5


async def test_max_models(make_server: Any) -> None:
    s: Served = await make_server(max_models=1)
    write_checkpoint(s.models_dir / "a")
    await s.load("a", "a")
    assert await _code(s.load("b", "a")) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_preload_and_metrics_endpoint(make_server: Any, tmp_path: Any) -> None:
    write_checkpoint(tmp_path / "models" / "pre")
    s: Served = await make_server(preload="first=pre,missing=nothing-here", metrics_port=0)
    listed = {m.name: m.state for m in (await s.stub.ListModels(inference_pb2.ListModelsRequest())).models}
    assert listed == {"first": inference_pb2.MODEL_STATE_READY, "missing": inference_pb2.MODEL_STATE_FAILED}
    await s.stub.Generate(Req(model="first", prompt="ab", max_new_tokens=4), timeout=10)
    port = s.server.on_start[0].__self__.port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in ("time_to_first_token_seconds_bucket", "inter_token_latency_seconds_bucket",
                 "request_queue_time_seconds_bucket", "e2e_request_latency_seconds_bucket", "batch_size_bucket",
                 "model_load_seconds_bucket", "prompt_tokens_total", "generation_tokens_total",
                 "request_success_total", "requests_running", "requests_waiting", "models_loaded", "rpcs_total"):
        assert f"chargpt_inference_{name}" in body, name
    assert 'chargpt_inference_request_success_total{finish_reason="length",model="first"} 1.0' in body
    assert 'chargpt_inference_generation_tokens_total{model="first"} 4.0' in body
    assert 'chargpt_inference_prompt_tokens_total{model="first"} 2.0' in body
    assert 'chargpt_inference_rpcs_total{code="OK",method="Generate"} 1.0' in body


async def test_shutdown_lets_streams_finish_and_refuses_new_work(make_server: Any) -> None:
    s: Served = await make_server()
    write_checkpoint(s.models_dir / "tiny")
    await s.load("tiny", "tiny")
    stream = s.stub.GenerateStream(Req(model="tiny", prompt="a", max_new_tokens=300), timeout=60)
    await stream.read()
    stopping = asyncio.ensure_future(s.server.stop(5))
    await _until(lambda: s.server.registry.draining)
    assert await _code(s.stub.Generate(Req(model="tiny", prompt="a"), timeout=5)) in (
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    messages = []
    while (message := await stream.read()) != grpc.aio.EOF:
        messages.append(message)
    assert messages[-1].summary.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    await stopping


async def test_requests_to_a_loading_model_are_unavailable(make_server: Any, monkeypatch: Any) -> None:
    import threading

    from inference_service import registry

    release = threading.Event()
    real = registry.load_checkpoint  # type: ignore[attr-defined]

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "load_checkpoint", slow_load)
    s: Served = await make_server()
    write_checkpoint(s.models_dir / "tiny")
    loading = asyncio.ensure_future(s.load("tiny", "tiny"))
    await _until(lambda: "tiny" in s.server.registry.models)
    m = (await s.stub.GetModel(inference_pb2.GetModelRequest(name="tiny"), timeout=5)).model
    assert m.state == inference_pb2.MODEL_STATE_LOADING
    assert await _code(s.stub.Generate(Req(model="tiny", prompt="a"), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    assert await _health(s, "tiny") == NOT_SERVING
    assert (await s.stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5)).models  # the loop is free
    release.set()
    assert (await loading).model.state == inference_pb2.MODEL_STATE_READY
    assert await _health(s, "tiny") == SERVING


async def test_only_the_newest_failed_loads_stay_listed(served: Served) -> None:
    """Each failed load is listed with its error, but a client loading bad checkpoints again and again cannot grow
    the list without limit: the newest FAILED_LISTED stay."""
    for i in range(FAILED_LISTED + 4):
        assert await _code(served.load(f"bad{i}", "missing")) == grpc.StatusCode.NOT_FOUND
    listed = (await served.stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5)).models
    failed = [m.name for m in listed if m.state == inference_pb2.MODEL_STATE_FAILED]
    assert sorted(failed) == sorted(f"bad{i}" for i in range(4, FAILED_LISTED + 4))
