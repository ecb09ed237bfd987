"""Trainer server factory and entry point (`chargpt-trainer`)."""

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
from chargpt.v1 import trainer_pb2, trainer_pb2_grpc
from trainer_service.servicer import TrainerServicer
from trainer_service.settings import TrainerSettings

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


async def create_server(settings: TrainerSettings) -> tuple[ManagedServer, int]:
    """A ready-to-start trainer server bound to settings.host:port; returns it and the bound port."""
    server = new_server(settings)
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(TrainerServicer(settings.device), server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    port = bind(server, settings)
    return ManagedServer(server, health, [SERVICE_NAME]), port


async def _serve(settings: TrainerSettings) -> None:
    server, _ = await create_server(settings)
    await serve_forever(server, settings.shutdown_grace_seconds)


def main(argv: Sequence[str] | None = None) -> None:
    settings = TrainerSettings.from_args(argv)
    configure_logging(settings.log_level)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
