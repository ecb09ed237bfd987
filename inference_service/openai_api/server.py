"""Uvicorn serving the OpenAI-compatible app inside the gRPC server's event loop (one process, one model copy)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

from inference_service.settings import InferenceSettings

log = logging.getLogger(__name__)


class _InLoopServer(uvicorn.Server):
    """The service's own SIGTERM handling drains both protocols; uvicorn must not take the signals over."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return


class HttpEndpoint:
    """Started and stopped with the gRPC server (ManagedServer hooks); `port` is the bound port."""

    def __init__(self, settings: InferenceSettings, app: FastAPI) -> None:
        self.settings, self.app = settings, app
        self.port: int | None = None
        self._server: _InLoopServer | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> int | None:
        """Listen now (so a taken port fails start-up, and port 0 is known before start)."""
        if self.settings.http_port is None:
            return None
        host = self.settings.http_host or self.settings.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, self.settings.http_port))
        self._socket.listen(2048)
        self._socket.setblocking(False)
        self.port = int(self._socket.getsockname()[1])
        return self.port

    async def start(self) -> None:
        if self.port is None:
            return
        s = self.settings
        config = uvicorn.Config(self.app, lifespan="off", log_level="warning", access_log=False,
                                timeout_graceful_shutdown=int(s.shutdown_grace_seconds) or None,
                                ssl_certfile=s.tls_cert_file, ssl_keyfile=s.tls_key_file,
                                ssl_ca_certs=str(s.tls_client_ca_file) if s.tls_client_ca_file else None,
                                ssl_cert_reqs=ssl.CERT_REQUIRED if s.tls_client_ca_file else ssl.CERT_NONE)
        self._server = _InLoopServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the start-up error
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.005)
        scheme = "https" if s.tls_cert_file else "http"
        log.info("OpenAI-compatible API on %s://%s:%d/v1", scheme, s.http_host or s.host, self.port)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._socket.close()
        self._server = self._task = None
