"""Building and running a grpc.aio server: interceptors, health, reflection, TLS, metrics and SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chargpt.server.errors import ErrorInterceptor, RpcObserver
from chargpt.server.settings import ServerSettings
from chargpt.server.tenancy.interceptor import TenantInterceptor
from chargpt.server.tenancy.keys import KeyStore

log = logging.getLogger(__name__)


def key_store(settings: ServerSettings) -> KeyStore | None:
    """The keys both transports check (None: no keys configured, every caller is the single user)."""
    if settings.keys_file is None and not settings.auth_token:
        return None
    return KeyStore(settings.keys_file, settings.auth_token)


def new_server(settings: ServerSettings, observer: RpcObserver | None = None,
               keys: KeyStore | None = None) -> grpc.aio.Server:
    """An aio server with tenant authentication (when keys are configured) in front of the error mapping."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if keys is not None:
        interceptors.append(TenantInterceptor(keys))
    interceptors.append(ErrorInterceptor(observer))
    options = [("grpc.max_receive_message_length", settings.max_message_bytes),
               ("grpc.max_send_message_length", settings.max_message_bytes),
               ("grpc.so_reuseport", 0)]
    return grpc.aio.server(interceptors=interceptors, options=options)


def add_health_and_reflection(server: grpc.aio.Server, service_names: Sequence[str]
                              ) -> health.aio.HealthServicer:
    """Register grpc.health.v1 (every service NOT_SERVING until set) and server reflection."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, service_names: Sequence[str],
                      serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *service_names):
        await health_servicer.set(name, status)


def bind(server: grpc.aio.Server, settings: ServerSettings) -> int:
    """Listen on host:port, with TLS (and client-certificate checks) when configured; returns the port."""
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert_file and settings.tls_key_file:
        key = settings.tls_key_file.read_bytes()
        cert = settings.tls_cert_file.read_bytes()
        client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                                  require_client_auth=client_ca is not None)
        port: int = server.add_secure_port(address, credentials)
    elif settings.tls_cert_file or settings.tls_key_file:
        raise ValueError("TLS needs both tls_cert_file and tls_key_file")
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not listen on {address}")
    return port


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class ManagedServer:
    """A grpc.aio server plus the service's own start/stop work (health flips, job managers, metrics)."""

    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer,
                 service_names: Sequence[str]) -> None:
        self.grpc_server = server
        self.health = health_servicer
        self.service_names = list(service_names)
        self.on_start: list[Callable[[], Awaitable[None]]] = []
        self.on_stop: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        await self.grpc_server.start()
        for hook in self.on_start:
            await hook()
        await set_serving(self.health, self.service_names, True)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, run the service's stop hooks, then stop accepting and drain RPCs."""
        await set_serving(self.health, self.service_names, False)
        for hook in self.on_stop:
            await hook()
        await self.grpc_server.stop(grace)

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def serve_forever(server: ManagedServer, grace: float) -> None:
    """Start, serve until SIGTERM/SIGINT, then drain and stop."""
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining for up to %.0fs", grace)
    await server.stop(grace)


SettingsT = TypeVar("SettingsT", bound=ServerSettings)


def run_service(settings_type: type[SettingsT],
                create: Callable[[SettingsT], Awaitable[tuple[ManagedServer, int]]],
                argv: Sequence[str] | None = None) -> None:
    """A service's `main`: settings from flags and environment, logging, then serve until SIGTERM."""
    settings = settings_type.from_args(argv)
    configure_logging(settings.log_level)

    async def serve() -> None:
        server, _ = await create(settings)
        await serve_forever(server, settings.shutdown_grace_seconds)

    asyncio.run(serve())
