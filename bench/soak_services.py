"""The soak's services: servers as subprocesses on loopback, their readiness and shutdown; the soak's corpus."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("CHARGPT_SHAKESPEARE", ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))


def corpus_text() -> str:
    if CORPUS.is_file():
        return CORPUS.read_text(encoding="utf-8")[:300_000]
    words = ["the", "king", "and", "queen", "of", "a", "far", "country", "went", "to", "sea", "in", "a", "boat,",
             "and", "said:", "why?"]
    rng = random.Random(0)
    return " ".join(rng.choice(words) for _ in range(40_000))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(module: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")])}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=out, stderr=subprocess.STDOUT)


async def wait_serving(channel: grpc.aio.Channel, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("a service did not become SERVING")
        await asyncio.sleep(0.2)


def stop(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, int]:
    """SIGTERM each service in turn; their exit codes (0 expected)."""
    codes = {}
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            codes[name] = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[name] = proc.wait()
    return codes
