"""Inference server factory and entry point (`chargpt-inference`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from chargpt import errors
from chargpt.core.calibration import Calibrator
from chargpt.core.device import cpu_cores
from chargpt.server.allocator import keep_freed_memory
from chargpt.server.metrics import MetricsEndpoint
from chargpt.server.serving import (
    ManagedServer,
    add_health_and_reflection,
    bind,
    key_store,
    new_server,
    run_service,
)
from chargpt.server.tenancy.principal import SHARED_OWNER
from chargpt.v1 import inference_pb2, inference_pb2_grpc
from chargpt.wire.checkpoint_kinds import CHECKPOINT_KINDS
from inference_service.grpc_api.servicer import InferenceServicer
from inference_service.metrics import InferenceMetrics
from inference_service.openai_api.app import create_app
from inference_service.openai_api.server import HttpEndpoint
from inference_service.registry import ModelRegistry
from inference_service.settings import InferenceSettings

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
log = logging.getLogger(__name__)


def default_torch_threads() -> int:
    """Every core, at most 8 (this model's small matrices gain little past 8); the engine drops to one thread
    for small decode batches, which leaves the gRPC event loop a core when it matters most (see DecodePolicy)."""
    return max(1, min(8, cpu_cores()))


def parse_preload(spec: str) -> list[tuple[str, str]]:
    """`name=path,name=trainer:JOB/best` -> [(name, path)]."""
    pairs = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise errors.InvalidArgumentError("preload", f"expected name=path, got {item!r}")
        pairs.append((name.strip(), path.strip()))
    return pairs


async def create_server(settings: InferenceSettings) -> tuple[ManagedServer, int]:
    """A ready-to-start inference server bound to settings.host:port; returns it and the bound port."""
    torch.set_num_threads(settings.torch_threads or default_torch_threads())
    if settings.keep_freed_memory:
        keep_freed_memory()
    preload = parse_preload(settings.preload)
    if settings.recalibrate:
        Calibrator(settings.resolved_calibration_dir()).clear()
    metrics = InferenceMetrics()
    keys = key_store(settings)
    server = new_server(settings, observer=metrics.rpcs.observe, keys=keys)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    registry = ModelRegistry(settings, metrics, health)
    servicer = InferenceServicer(settings, registry, metrics)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = bind(server, settings)
    managed = ManagedServer(server, health, [SERVICE_NAME])
    endpoint = MetricsEndpoint(settings, metrics.registry)
    managed.on_start.append(endpoint.start)
    http = HttpEndpoint(settings, create_app(servicer.service, keys, metrics.http_requests))
    http.bind()
    managed.on_start.append(http.start)
    managed.on_start.append(lambda: _preload(servicer, preload, settings))
    managed.on_stop.append(lambda: registry.drain(settings.shutdown_grace_seconds))
    managed.on_stop.append(http.stop)
    managed.on_stop.append(endpoint.stop)
    # Tests and tools reach the internals through the server object.
    managed.registry = registry  # type: ignore[attr-defined]
    managed.metrics = metrics  # type: ignore[attr-defined]
    managed.http = http  # type: ignore[attr-defined]
    return managed, port


async def _preload(servicer: InferenceServicer, models: list[tuple[str, str]], settings: InferenceSettings) -> None:
    """Load the --preload models, shared by every tenant; one that fails is logged (and listed as FAILED), the
    rest still load."""
    for name, path in models:
        try:
            await servicer.load(_load_request(name, path), SHARED_OWNER, settings.trainer_auth_token)
        except (errors.ChargptError, ValueError) as exc:
            log.error("preloading %s from %s failed: %s", name, path, exc)


def _load_request(name: str, path: str) -> inference_pb2.LoadModelRequest:
    """A LoadModelRequest for `path` or `trainer:JOB[/best|/latest]`."""
    if not path.startswith("trainer:"):
        return inference_pb2.LoadModelRequest(name=name, checkpoint_path=path)
    job, _, kind = path.removeprefix("trainer:").partition("/")
    if kind.lower() not in CHECKPOINT_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r} in {path!r}: expected best or latest")
    ref = inference_pb2.TrainerCheckpointRef(job_id=job, kind=CHECKPOINT_KINDS[kind.lower()])
    return inference_pb2.LoadModelRequest(name=name, trainer_checkpoint=ref)


def main(argv: Sequence[str] | None = None) -> None:
    run_service(InferenceSettings, create_server, argv)


if __name__ == "__main__":
    main()
