"""The inference benchmarks' server: the model it serves, the server subprocess, and one request of each kind."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.serving_common import Timer, sse_completion
from chargpt.core.checkpoint import save_checkpoint
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT
from chargpt.core.tokenizer import CharTokenizer
from chargpt.v1 import common_pb2, inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("CHARGPT_SHAKESPEARE", ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
MODEL = "bench"


def corpus_text() -> str:
    if CORPUS.is_file():
        return CORPUS.read_text(encoding="utf-8")
    # Fallback with the same 65-character vocabulary size when the corpus is absent.
    chars = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return (chars * 2000)[:100_000]


def write_model(models_dir: Path, text: str, config: ModelConfig) -> GPT:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.from_text(text)
    model = GPT(config.model_copy(update={"vocab_size": tokenizer.vocab_size})).eval()
    save_checkpoint(models_dir / MODEL, model, tokenizer)
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(models_dir: Path, port: int, http_port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "inference_service.server", "--port", str(port), "--http-port", str(http_port),
               "--models-dir", str(models_dir), "--preload", f"{MODEL}={MODEL}", "--torch-threads", str(args.threads),
               "--kv-cache-dtype", args.kv_cache_dtype, "--recalibrate", "true",
               "--decode-runner", args.decode_runner,
               "--calibration-dir", str(models_dir.parent / "calibration"),
               "--device", "cpu", "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(command, cwd=ROOT, env=env)


async def wait_ready(channel: grpc.aio.Channel, timeout: float = 120.0) -> None:
    stub, deadline = health_pb2_grpc.HealthStub(channel), time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=MODEL), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the inference server did not become ready")


async def one_stream(stub: inference_pb2_grpc.InferenceServiceStub, seed: int, new_tokens: int,
                     regex: str | None = None) -> dict[str, Any]:
    request = inference_pb2.GenerateRequest(model=MODEL, prompt="\n", max_new_tokens=new_tokens, seed=seed,
                                            preset=inference_pb2.SAMPLING_PRESET_BALANCED, regex=regex)
    timer = Timer()
    async for message in stub.GenerateStream(request, timeout=600):
        timer.received(len(message.text))
    return timer.result()


async def one_http_stream(http: httpx.AsyncClient, seed: int, new_tokens: int) -> dict[str, Any]:
    """The same request as one_stream through /v1/completions with stream: true (server-sent events)."""
    body = {"model": MODEL, "prompt": "\n", "max_tokens": new_tokens, "seed": seed, "preset": "balanced",
            "stream": True, "stream_options": {"include_usage": False}}
    return await sse_completion(http, body)


async def score(stub: inference_pb2_grpc.InferenceServiceStub, text: str, stride: int) -> dict[str, Any]:
    start = time.perf_counter()
    reply = await stub.Score(inference_pb2.ScoreRequest(model=MODEL, text=text, stride=stride), timeout=600)
    seconds = time.perf_counter() - start
    return {"chars": len(text), "stride": stride, "chars_s": len(text) / seconds, "seconds": seconds,
            "bits_per_char": reply.bits_per_char}


async def measured_model(stub: inference_pb2_grpc.InferenceServiceStub) -> inference_pb2.Model:
    """The preloaded model once its decode plan is measured (it is served with the defaults until then)."""
    while True:
        reply = await stub.GetModel(inference_pb2.GetModelRequest(name=MODEL), timeout=10)
        served: inference_pb2.Model = reply.model
        if served.calibration != common_pb2.CALIBRATION_STATE_PENDING:
            return served
        await asyncio.sleep(0.5)


def served_choices(served: inference_pb2.Model) -> dict[str, Any]:
    """The serving choices the server's calibration made for the model."""
    return {"weights": served.dtype, "narrow_decode_from": served.narrow_decode_from,
            "kv_cache": served.kv_cache_dtype, "parallel_decode_from": served.parallel_decode_from,
            "split_decode_from": served.split_decode_from, "ggml_decode_up_to": served.ggml_decode_up_to}
