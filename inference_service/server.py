"""Inference server factory and entry point (`chargpt-inference`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from chargpt.server.serving import (
    ManagedServer,
    add_health_and_reflection,
    bind,
    configure_logging,
    new_server,
    serve_forever,
)
from chargpt.v1 import inference_pb2, inference_pb2_grpc
from inference_service.servicer import InferenceServicer
from inference_service.settings import InferenceSettings

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


async def create_server(settings: InferenceSettings) -> tuple[ManagedServer, int]:
    """A ready-to-start inference server bound to settings.host:port; returns it and the bound port."""
    server = new_server(settings)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(), server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    port = bind(server, settings)
    return ManagedServer(server, health, [SERVICE_NAME]), port


async def _serve(settings: InferenceSettings) -> None:
    server, _ = await create_server(settings)
    await serve_forever(server, settings.shutdown_grace_seconds)


def main(argv: Sequence[str] | None = None) -> None:
    settings = InferenceSettings.from_args(argv)
    configure_logging(settings.log_level)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
