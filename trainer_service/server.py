"""Trainer server factory and entry point (`chargpt-trainer`)."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health

from chargpt.core.calibration import Calibrator
from chargpt.server.metrics import MetricsEndpoint
from chargpt.server.serving import (
    ManagedServer,
    add_health_and_reflection,
    bind,
    key_store,
    new_server,
    run_service,
)
from chargpt.v1 import trainer_pb2, trainer_pb2_grpc
from trainer_service.corpora.library import CorpusLibrary
from trainer_service.host_calibration import HostCalibration
from trainer_service.jobs.events import EventHub
from trainer_service.jobs.manager import JobManager
from trainer_service.jobs.plan import DeviceProber
from trainer_service.metrics import TrainerMetrics
from trainer_service.servicer import TrainerServicer
from trainer_service.settings import TrainerSettings
from trainer_service.store import Store

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
DB_FILE = "trainer.db"
LOCK_FILE = "server.lock"


class TrainerServer(ManagedServer):
    """The managed gRPC server plus handles operators and tests use: the store, jobs and /metrics port."""

    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, names: list[str], *,
                 store: Store, jobs: JobManager, metrics_endpoint: MetricsEndpoint) -> None:
        super().__init__(server, health_servicer, names)
        self.store, self.jobs, self.metrics_endpoint = store, jobs, metrics_endpoint


def lock_data_dir(data_dir: Path) -> IO[bytes]:
    """One server per data directory: two would both schedule its jobs."""
    handle = open(data_dir / LOCK_FILE, "ab")  # noqa: SIM115 - held until the server stops
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"another trainer server is using {data_dir}") from None
    return handle


async def create_server(settings: TrainerSettings) -> tuple[ManagedServer, int]:
    """A ready-to-start trainer server bound to settings.host:port; returns it and the bound port.

    The store opens here, so the server is SERVING as soon as it starts; the scheduler, the event tail and
    the metrics endpoint start and stop with it.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    data_dir_lock = lock_data_dir(settings.data_dir)
    store = Store(settings.data_dir / DB_FILE)
    metrics = TrainerMetrics()
    corpora = CorpusLibrary(store, settings.data_dir / "corpora", settings.max_upload_bytes)
    hub = EventHub(store, metrics, settings.event_poll_seconds)
    jobs = JobManager(settings, store, hub)
    calibrator = Calibrator(settings.resolved_calibration_dir())
    if settings.recalibrate:
        calibrator.clear()
    calibration = HostCalibration(calibrator)
    prober = DeviceProber(settings.device, calibration)
    server = new_server(settings, observer=metrics.rpcs.observe, keys=key_store(settings))
    servicer = TrainerServicer(settings, store, corpora, jobs, hub, metrics, prober)
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)
    health_servicer = add_health_and_reflection(server, [SERVICE_NAME])
    port = bind(server, settings)
    endpoint = MetricsEndpoint(settings, metrics.registry)
    managed = TrainerServer(server, health_servicer, [SERVICE_NAME], store=store, jobs=jobs, metrics_endpoint=endpoint)
    hub.listeners.append(lambda event: metrics.refresh_store_gauges(store) if event.kind == "state" else None)

    async def on_start() -> None:
        if settings.builtin_corpora:
            corpora.start_builtins()
        hub.start()
        await jobs.start()
        metrics.refresh_store_gauges(store)
        await endpoint.start()
        # The host's CPU figures for `auto`: cached ones at once, missing ones measured in the background.
        if (await asyncio.to_thread(prober.facts, "auto")).type == "cpu":
            calibration.start()

    async def on_stop() -> None:
        calibration.close()
        await jobs.stop()
        await hub.stop()
        await corpora.builtins_ready()
        metrics.refresh_store_gauges(store)
        await endpoint.stop()
        data_dir_lock.close()  # a new server may take over the data directory now

    managed.on_start.append(on_start)
    managed.on_stop.append(on_stop)
    return managed, port


def main(argv: Sequence[str] | None = None) -> None:
    run_service(TrainerSettings, create_server, argv)


if __name__ == "__main__":
    main()
