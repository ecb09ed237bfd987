"""Prometheus plumbing shared by both services: a per-server registry, the RPC counter and the /metrics port."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, start_http_server

from chargpt.server.settings import ServerSettings

log = logging.getLogger(__name__)


class RpcMetrics:
    """`<prefix>_rpcs_total{method, code}`; its `observe` is the ErrorInterceptor's observer."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.rpcs = Counter(f"{prefix}_rpcs_total", "RPCs handled, by method and final status code",
                            ["method", "code"], registry=registry)

    def observe(self, method: str, code: grpc.StatusCode) -> None:
        self.rpcs.labels(method=method.rsplit("/", 1)[-1], code=code.name).inc()


class MetricsEndpoint:
    """The HTTP server behind /metrics, started and stopped with the gRPC server."""

    def __init__(self, settings: ServerSettings, registry: CollectorRegistry) -> None:
        self._settings, self._registry = settings, registry
        self._server: Any = None
        self.port: int | None = None

    async def start(self) -> None:
        if self._settings.metrics_port is None:
            return
        host = self._settings.metrics_host or self._settings.host
        self._server, _thread = start_http_server(self._settings.metrics_port, addr=host, registry=self._registry)
        self.port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
