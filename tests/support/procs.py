"""Real service processes for fault tests: start `python -m <service>.server`, wait for SERVING, stop."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(module: str, args: list[str], log: Path, extra_path: list[Path] | None = None,
                  env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m module args...` with the repository (and extra_path) importable; output appended to log."""
    paths = [str(ROOT), str(ROOT / "client"), *(str(p) for p in extra_path or [])]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **(env or {})}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", module, *args], env=environment, stdout=out,
                                stderr=subprocess.STDOUT)


async def wait_serving(port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, f"server on port {port} did not become SERVING"
            await asyncio.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Kill a process this test started, if it is still running."""
    if process.poll() is None:
        process.kill()
        process.wait(30)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
