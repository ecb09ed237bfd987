"""bench.peers' servers: chargpt (gRPC and HTTP from one process) and llama.cpp's llama-server, each a subprocess."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from bench.inference_server import (
    MODEL,
    free_port,
    measured_model,
    one_stream,
    served_choices,
    start_server,
    wait_ready,
)
from bench.serving_common import Tally, cpu_seconds, http_session, sse_completion, timed_round
from chargpt.sampling_params import SAMPLING_PRESETS, SamplingPreset
from chargpt.v1 import inference_pb2, inference_pb2_grpc

BALANCED = SAMPLING_PRESETS[SamplingPreset.BALANCED]
SEE_README = "see README 'Serving peers'"


@dataclass
class ServedPeer:
    """A peer behind a server process: each stream is one request, a round's streams run concurrently."""

    name: str
    stream: Callable[[int], Awaitable[dict[str, Any]]]  # seed -> one stream's timings
    greedy_text: Callable[[str, int], Awaitable[str]]  # (prompt, characters) -> greedy continuation
    pid: int
    in_process: bool = False

    async def run_round(self, streams: int, first_seed: int, tally: Tally) -> None:
        await timed_round(self.stream, streams, first_seed, lambda: cpu_seconds(self.pid), tally)

    async def greedy(self, prompt: str, chars: int) -> str:
        return await self.greedy_text(prompt, chars)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def start_chargpt(args: argparse.Namespace, models_dir: Path, new_tokens: int, stack: AsyncExitStack
                        ) -> tuple[ServedPeer, ServedPeer, dict[str, Any]]:
    """chargpt's gRPC and HTTP peers (one server, as bench.inference runs it, measured and warmed up), and the
    serving choices its calibration made."""
    port, http_port = free_port(), free_port()
    server = start_server(models_dir, port, http_port, args)
    stack.callback(stop, server)
    channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
    http = await stack.enter_async_context(http_session(f"http://127.0.0.1:{http_port}"))
    await wait_ready(channel)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    serving = served_choices(await measured_model(stub))

    async def grpc_greedy(prompt: str, chars: int) -> str:
        request = inference_pb2.GenerateRequest(model=MODEL, prompt=prompt, max_new_tokens=chars, temperature=0.0)
        reply = await stub.Generate(request, timeout=600)
        return str(reply.text)

    async def http_greedy(prompt: str, chars: int) -> str:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": chars, "temperature": 0.0, "stream": True}
        return str((await sse_completion(http, body))["text"])

    grpc_peer = ServedPeer("chargpt_grpc", lambda seed: one_stream(stub, seed, new_tokens), grpc_greedy, server.pid)
    http_peer = ServedPeer("chargpt_http", lambda seed: chargpt_http_stream(http, seed, new_tokens), http_greedy,
                           server.pid)
    return grpc_peer, http_peer, serving


async def chargpt_http_stream(http: aiohttp.ClientSession, seed: int, new_tokens: int) -> dict[str, Any]:
    """bench.inference's one_http_stream (one_stream's request as server-sent events) on an aiohttp session."""
    body = {"model": MODEL, "prompt": "\n", "max_tokens": new_tokens, "seed": seed, "preset": "balanced",
            "stream": True, "stream_options": {"include_usage": False}}
    return await sse_completion(http, body)


def llama_server_binary() -> tuple[str | None, str]:
    """$CHARGPT_LLAMA_SERVER, else llama-server on PATH; (None, why) where neither is there."""
    configured = os.environ.get("CHARGPT_LLAMA_SERVER")
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured, ""
        return None, f"$CHARGPT_LLAMA_SERVER={configured} is not an executable file — {SEE_README}"
    found = shutil.which("llama-server")
    return (found, "") if found else (None, f"not found — {SEE_README}")


def llama_body(prompt: str, max_tokens: int, seed: int, temperature: float) -> dict[str, Any]:
    """llama-server's /v1/completions request with chargpt's sampling only: its other samplers (top-p, min-p,
    typical, repetition penalty) off, and ignore_eos so the end-of-text token is never sampled and every stream
    runs to max_tokens, as chargpt's do."""
    return {"prompt": prompt, "max_tokens": max_tokens, "n_predict": max_tokens, "temperature": temperature,
            "top_k": BALANCED.top_k, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
            "seed": seed, "ignore_eos": True, "stream": True}


async def wait_healthy(http: aiohttp.ClientSession, process: subprocess.Popen[bytes], log: Path,
                       timeout: float = 120.0) -> None:
    """Until llama-server's /health answers 200 (503 while it loads); its log's tail if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            async with http.get("/health", timeout=aiohttp.ClientTimeout(total=2)) as reply:
                if reply.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.2)
    state = f"exited with {process.returncode}" if process.poll() is not None else f"not healthy in {timeout:.0f} s"
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    raise RuntimeError(f"llama-server {state}: {tail}")


async def start_llama_server(binary: str, gguf: Path, new_tokens: int, slots: int, context: int, threads: int,
                             stack: AsyncExitStack) -> ServedPeer:
    """llama-server on the GGUF export with `slots` parallel sequences (continuous batching) of `context` / slots
    positions each, healthy and warmed up."""
    port, log = free_port(), gguf.parent / "llama-server.log"
    command = [binary, "-m", str(gguf), "-t", str(threads), "-np", str(slots), "-c", str(context),
               "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    stack.callback(stop, server)
    http = await stack.enter_async_context(http_session(f"http://127.0.0.1:{port}"))
    await wait_healthy(http, server, log)

    async def stream(seed: int) -> dict[str, Any]:
        return await sse_completion(http, llama_body("\n", new_tokens, seed, BALANCED.temperature))

    async def greedy(prompt: str, chars: int) -> str:
        return str((await sse_completion(http, llama_body(prompt, chars, 0, 0.0)))["text"])

    return ServedPeer("llama_server", stream, greedy, server.pid)
