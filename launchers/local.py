"""Both services started in this process on free loopback ports (an asyncio loop in a thread), then stopped.

The one place that starts both: it sits above the services (and the shared `chargpt` package below them), and
`chargpt demo` and the notebook's `connect()` import it only when given no service addresses, so the client
library itself never imports the server packages.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
START_TIMEOUT_S = 120.0


class ServicesUnavailable(RuntimeError):
    """The server packages (trainer_service, inference_service, torch) are not installed."""


class LocalServices:
    """`with LocalServices(data_dir) as s:` gives s.trainer_address and s.inference_address."""

    def __init__(self, data_dir: Path, device: str = "auto") -> None:
        self.data_dir = data_dir
        self.device = device
        self.trainer_address = ""
        self.inference_address = ""
        self._servers: list[Any] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chargpt-demo-services", daemon=True)

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = START_TIMEOUT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def __enter__(self) -> LocalServices:
        try:
            from inference_service.server import create_server as create_inference
            from inference_service.settings import InferenceSettings
            from trainer_service.server import create_server as create_trainer
            from trainer_service.settings import TrainerSettings
        except ImportError as exc:
            raise ServicesUnavailable(
                f"the demo runs both services locally and needs the server install ({exc.name} is missing): "
                "pip install 'chargpt[server,plot]' plus torch, or run `make demo`") from exc
        self._thread.start()
        try:
            trainer_settings = TrainerSettings(host="127.0.0.1", port=0, data_dir=self.data_dir / "trainer",
                                               device=self.device)
            self.trainer_address = self._start(create_trainer(trainer_settings))
            inference_settings = InferenceSettings(host="127.0.0.1", port=0, models_dir=self.data_dir / "models",
                                                   trainer_address=self.trainer_address, device=self.device)
            self.inference_address = self._start(create_inference(inference_settings))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, factory: Coroutine[Any, Any, tuple[Any, int]]) -> str:
        async def start() -> int:
            server, port = await factory
            await server.start()
            self._servers.append(server)
            return port

        return f"127.0.0.1:{self._run(start())}"

    def __exit__(self, *exc: object) -> None:
        async def stop_all() -> None:
            for server in reversed(self._servers):
                await server.stop(2.0)

        if self._thread.is_alive():
            try:
                self._run(stop_all(), timeout=60)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)
        self._servers.clear()
