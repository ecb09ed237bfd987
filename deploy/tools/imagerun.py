"""Run an image target's entry point on this machine, as the container would, for CI without a Docker engine.

The command, environment and HEALTHCHECK come from the Dockerfile itself; only what must differ outside a
container is overridden (ports, the /data volume, listening on 127.0.0.1).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from deploy.tools.dockerfile import Stage

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def console_script(name: str) -> list[str]:
    """The installed console script, or (in a bare checkout) the same entry point run by this interpreter."""
    for directory in (str(Path(sys.executable).parent), None):
        found = shutil.which(name, path=directory)
        if found:
            return [found]
    target = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"][name]
    module, function = target.split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def image_environment(stage: Stage, data_dir: Path, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The image's ENV with /data mapped to data_dir and hosts on loopback, over this process's environment."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "client"), env.get("PYTHONPATH", "")])
    for key, value in stage.env.items():
        if value.startswith("/data"):
            value = str(data_dir) + value.removeprefix("/data")
        elif key.endswith("_HOST") and value == "0.0.0.0":
            value = "127.0.0.1"
        env[key] = value
    env.update(overrides or {})
    return env


def start(stage: Stage, env: dict[str, str], log: Path, extra_args: list[str] | None = None) -> subprocess.Popen[bytes]:
    command = [*console_script(stage.entrypoint[0]), *stage.entrypoint[1:], *stage.cmd, *(extra_args or [])]
    with log.open("wb") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent)


def healthcheck(stage: Stage, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the image's HEALTHCHECK command, with its copied-in script taken from the build context."""
    command = list(stage.healthcheck)
    if command[0] == "python":
        command[0] = sys.executable
    command = [str(REPO / stage.copies[part]) if part in stage.copies else part for part in command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


def wait_healthy(stage: Stage, env: dict[str, str], process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{stage.name} exited with {process.returncode} before becoming healthy")
        result = healthcheck(stage, env)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stage.name} not healthy after {timeout}s: {result.stdout}{result.stderr}")
        time.sleep(0.5)


def stop(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, as `docker stop` sends; SIGKILL only if it overstays (and then report -9)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -signal.SIGKILL
