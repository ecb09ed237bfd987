"""Inference faults: damaged checkpoints, 200 concurrent streams with cancellations, deadlines, SIGTERM draining."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from chargpt.v1 import inference_pb2, inference_pb2_grpc
from tests.inference_service.conftest import Served, write_checkpoint
from tests.support.procs import free_port, start_service, stop, wait_serving

G = inference_pb2.GenerateRequest
CLEAR_CODES = {grpc.StatusCode.DATA_LOSS, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
               grpc.StatusCode.INVALID_ARGUMENT}


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[:int(len(data) * keep)])
    return damage


def _edit_manifest(**changes: Any) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        manifest = json.loads((path / "manifest.json").read_text())
        for dotted, value in changes.items():
            node = manifest
            *parents, leaf = dotted.split("__")
            for key in parents:
                node = node[key]
            node[leaf] = value
        (path / "manifest.json").write_text(json.dumps(manifest))
    return damage


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _pickled_weights(path: Path) -> None:
    """A classic attack: a pickle that runs code when loaded with torch.load, in place of the safetensors."""
    (path / "model.safetensors").write_bytes(b"\x80\x04\x95cos\nsystem\n(S'touch /tmp/chargpt-pwned'\ntR.")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "weights truncated": _truncate("model.safetensors", 0.5),
    "weights empty": _truncate("model.safetensors", 0.0),
    "manifest truncated": _truncate("manifest.json", 0.5),
    "weights missing": lambda p: (p / "model.safetensors").unlink(),
    "manifest missing": lambda p: (p / "manifest.json").unlink(),
    "weights pickled": _pickled_weights,
    "weights hash tampered": _edit_manifest(weights__sha256="0" * 64),
    "config tampered": _edit_manifest(model__n_embd=64),
    "vocabulary tampered": _edit_manifest(vocabulary="ab"),
    "weights path escapes": _edit_manifest(weights__file="../tiny/model.safetensors"),
    "format from the future": _edit_manifest(format_version=99),
    "manifest not json": lambda p: _write(p / "manifest.json", b"{not json"),
    "manifest not utf-8": lambda p: _write(p / "manifest.json", b"\xff\xfe\x00garbage"),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
async def test_damaged_checkpoints_fail_clearly_and_others_keep_serving(served: Served, damage: str) -> None:
    path = write_checkpoint(served.models_dir / "damaged", seed=5)
    DAMAGE[damage](path)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.load("damaged", "damaged")
    assert err.value.code() in CLEAR_CODES, (err.value.code(), err.value.details())
    assert err.value.details()
    model = (await served.stub.GetModel(inference_pb2.GetModelRequest(name="damaged"), timeout=5)).model
    assert model.state == inference_pb2.MODEL_STATE_FAILED and model.error
    assert not Path("/tmp/chargpt-pwned").exists()
    reply = await served.stub.Generate(G(model="tiny", prompt="a", max_new_tokens=4), timeout=10)
    assert len(reply.text) == 4


# ---- many streams

PROMPTS = [f"{chr(97 + i)}b" for i in range(10)]
STREAMS, TOKENS = 200, 48


async def _stream(stub: inference_pb2_grpc.InferenceServiceStub, prompt: str,
                  cancel_after_first: bool) -> tuple[str, int]:
    call = stub.GenerateStream(G(model="tiny", prompt=prompt, max_new_tokens=TOKENS, temperature=0.0), timeout=120)
    text, finish = "", inference_pb2.FINISH_REASON_UNSPECIFIED
    async for message in call:
        text += message.text
        if message.HasField("summary"):
            finish = message.summary.finish_reason
        if cancel_after_first:
            call.cancel()
            return text, inference_pb2.FINISH_REASON_CANCELLED
    return text, finish


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
async def test_200_concurrent_streams_with_a_third_cancelled(served: Served) -> None:
    alone = {}
    for prompt in PROMPTS:
        reply = await served.stub.Generate(G(model="tiny", prompt=prompt, max_new_tokens=TOKENS, temperature=0.0),
                                           timeout=30)
        alone[prompt] = reply.text
    rss: list[int] = []
    for _ in range(3):
        results = await asyncio.gather(*(_stream(served.stub, PROMPTS[i % len(PROMPTS)], i % 3 == 0)
                                         for i in range(STREAMS)))
        for i, (text, finish) in enumerate(results):
            if i % 3:
                assert finish == inference_pb2.FINISH_REASON_LENGTH and text == alone[PROMPTS[i % len(PROMPTS)]]
        await _until(lambda: served.metric("chargpt_inference_requests_running", model="tiny") == 0
                     and served.server.registry.models["tiny"].in_flight == 0)
        assert served.metric("chargpt_inference_requests_waiting", model="tiny") == 0
        gc.collect()
        rss.append(_rss_bytes())
    assert served.metric("chargpt_inference_request_failure_total", model="tiny", reason="cancelled") > 0
    # the first round warms allocators and caches; later rounds must not keep growing
    assert rss[2] - rss[1] < 32 << 20, [r >> 20 for r in rss]


async def test_stream_and_queue_deadlines(make_server: Any) -> None:
    s: Served = await make_server(max_batch_size=1)
    write_checkpoint(s.models_dir / "tiny")
    await s.load("tiny", "tiny")
    long = s.stub.GenerateStream(G(model="tiny", prompt="a", max_new_tokens=4000), timeout=60)
    await long.read()
    # waits in the queue behind the long stream, and its deadline passes there
    queued = s.stub.GenerateStream(G(model="tiny", prompt="a", max_new_tokens=5), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in queued:
            pass
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 5
    long.cancel()
    await _until(lambda: s.metric("chargpt_inference_requests_running", model="tiny") == 0
                 and s.metric("chargpt_inference_requests_waiting", model="tiny") == 0)
    reply = await s.stub.Generate(G(model="tiny", prompt="a", max_new_tokens=3), timeout=10)
    assert len(reply.text) == 3


@pytest.mark.slow
async def test_sigterm_drains_streams_then_exits_cleanly(tmp_path: Path) -> None:
    models, log, port = tmp_path / "models", tmp_path / "server.log", free_port()
    write_checkpoint(models / "tiny")
    args = ["--port", str(port), "--models-dir", str(models), "--preload", "tiny=tiny", "--device", "cpu",
            "--torch-threads", "1", "--shutdown-grace-seconds", "20"]
    server = start_service("inference_service.server", args, log)
    try:
        await wait_serving(port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            streams = [stub.GenerateStream(G(model="tiny", prompt="a", max_new_tokens=600, seed=i), timeout=60)
                       for i in range(4)]
            firsts = [await s.read() for s in streams]
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            with pytest.raises(grpc.aio.AioRpcError) as err:  # no new work while draining
                await stub.Generate(G(model="tiny", prompt="a", max_new_tokens=3), timeout=5)
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            for first, stream in zip(firsts, streams, strict=True):
                text, last = first.text, first
                while (message := await stream.read()) != grpc.aio.EOF:
                    text, last = text + message.text, message
                assert last.summary.finish_reason == inference_pb2.FINISH_REASON_LENGTH and len(text) == 600
        assert server.wait(30) == 0
        assert time.monotonic() - started < 20 + 5
    finally:
        stop(server)
        print(log.read_text(errors="replace")[-2000:])


async def _until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.fixture
async def served(make_server: Any) -> Served:
    s: Served = await make_server()
    write_checkpoint(s.models_dir / "tiny")
    await s.load("tiny", "tiny")
    return s
