"""The models a server holds: loading (off the event loop), naming, health, in-flight tracking and unloading."""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

import torch
from grpc_health.v1 import health, health_pb2

from chargpt import errors
from chargpt.core.checkpoint import Checkpoint, load_checkpoint
from chargpt.core.device import resolve_device, set_torch_threads
from chargpt.core.model import GPT
from chargpt.server.tenancy.policy import TenantLimits
from chargpt.server.tenancy.principal import SHARED_OWNER
from chargpt.wire.calibration_state import CalibrationState
from inference_service.engine import Engine
from inference_service.metrics import InferenceMetrics
from inference_service.ownership import check_unloadable, find_visible, model_key
from inference_service.score_batcher import ScoreBatcher
from inference_service.serving_choices import DTYPES
from inference_service.serving_plan import Serving, ServingPlanner, same_plan
from inference_service.settings import InferenceSettings

log = logging.getLogger(__name__)
NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TRAINER_CACHE = ".trainer-cache"


FAILED_LISTED = 16  # failed loads kept listed (the oldest is forgotten first)


class State(Enum):
    LOADING = 1
    READY = 2
    FAILED = 3
    UNLOADING = 4


def torch_worker(threads: int) -> ThreadPoolExecutor:
    """One worker thread whose torch ops use `threads` threads. torch's thread count belongs to each OS thread once
    it has run an op (a new thread starts from the count last set anywhere), so without this the worker would keep
    whatever count the engine thread had set for a small decode batch when the worker first ran."""
    return ThreadPoolExecutor(max_workers=1, initializer=set_torch_threads, initargs=(threads,))


@dataclass
class ModelEntry:
    """One named model and everything serving it."""

    name: str  # the registry key (ownership.model_key): the name, or "tenant/name"
    source: str
    owner: str = SHARED_OWNER  # the tenant that loaded it; SHARED_OWNER: preloaded, usable by every tenant
    device: str = ""
    dtype: str = ""
    state: State = State.LOADING
    error: str = ""
    checkpoint: Checkpoint | None = None
    float32_model: GPT | None = None  # a float32 copy of narrower weights (small decode batches, float32 dumps)
    engine: Engine | None = None
    scorer: ScoreBatcher | None = None
    loaded_time: datetime | None = None
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    freeing: asyncio.Task[None] | None = None  # once unloaded: frees the model when its last request ends
    calibration: CalibrationState = CalibrationState.PENDING
    calibrating: asyncio.Task[None] | None = None  # measuring the decode step, then serving by the result
    retiring: list[Engine] = field(default_factory=list)  # the defaults' engine, finishing its requests
    # Score and GetAttention run here, one at a time per model, beside the engine's decode thread.
    executor: ThreadPoolExecutor = field(default_factory=lambda: torch_worker(torch.get_num_threads()))

    def __post_init__(self) -> None:
        self.idle.set()

    def float32_weights(self) -> GPT:
        """The model with float32 weights, for what must be computed in float32 (GetAttention's FLOAT32 dumps):
        the served model if float32, else the float32 copy, made now if none is held (bf16 and fp16 values are
        exact in float32) and kept. Runs on the model's worker, one call at a time."""
        assert self.checkpoint is not None
        model = self.checkpoint.model
        if model.lm_head.weight.dtype == torch.float32:
            return model
        if self.float32_model is None:
            self.float32_model = copy.deepcopy(model).float()
        return self.float32_model


RESERVED = {"chargpt.v1.InferenceService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"}  # health service names of the server itself


def validate_name(name: str, field_name: str = "name") -> str:
    if not NAME.match(name) or name in RESERVED:
        raise errors.InvalidArgumentError(field_name, "must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return name


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, torch.dtype | None]:
    """Validated torch device string and dtype for a load request ("auto" resolved; None: measure once loaded,
    on CPU, where bf16 is faster on some hosts and slower on others)."""
    resolved, facts = resolve_device(device, "device")
    if dtype != "auto" and dtype not in DTYPES:
        raise errors.InvalidArgumentError("dtype", "must be auto, float32, bfloat16 or float16")
    if dtype == "auto":
        if facts.type == "cpu":
            return resolved, None
        return resolved, torch.bfloat16 if facts.type == "cuda" and facts.bf16_supported else torch.float32
    return resolved, DTYPES[dtype]


class ModelRegistry:
    """Name -> ModelEntry; every mutation happens on the event loop."""

    def __init__(self, settings: InferenceSettings, metrics: InferenceMetrics,
                 health_servicer: health.aio.HealthServicer) -> None:
        self.settings, self.metrics, self.health = settings, metrics, health_servicer
        self.models: dict[str, ModelEntry] = {}
        self.draining = False
        self.planner = ServingPlanner(settings, metrics)
        self._calibration_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calibration")

    def resolve_path(self, checkpoint_path: str) -> Path:
        """The checkpoint directory, which must lie inside models_dir once symlinks are resolved."""
        if not checkpoint_path or "\x00" in checkpoint_path:
            raise errors.InvalidArgumentError("checkpoint_path", "must be a non-empty path")
        if len(checkpoint_path.encode()) > 1024 or any(len(p.encode()) > 255 for p in Path(checkpoint_path).parts):
            raise errors.InvalidArgumentError("checkpoint_path", "too long: at most 1024 bytes, 255 per component")
        if ".." in Path(checkpoint_path).parts:
            raise errors.InvalidArgumentError("checkpoint_path", "must not contain '..'")
        root = self.settings.models_dir.resolve()
        path = (root / checkpoint_path).resolve()
        if path != root and root not in path.parents:
            raise errors.PermissionDeniedError(f"checkpoint_path {checkpoint_path!r} is outside the models root")
        return path

    def get(self, name: str) -> ModelEntry:
        """The model `name` means to the current caller (another tenant's reads as not loaded)."""
        return find_visible(self.models, name)

    def acquire(self, name: str) -> ModelEntry:
        """The READY model for a request, counted in flight until release()."""
        if not name:
            raise errors.InvalidArgumentError("model", "is required")
        if self.draining:
            raise errors.UnavailableError("the server is shutting down")
        entry = self.get(name)
        if entry.state is State.LOADING:
            raise errors.UnavailableError(f"model {name!r} is still loading")
        if entry.state is State.UNLOADING:
            raise errors.UnavailableError(f"model {name!r} is being unloaded")
        if entry.state is State.FAILED:
            raise errors.FailedPreconditionError(f"model {name!r} failed to load: {entry.error}")
        entry.in_flight += 1
        entry.idle.clear()
        return entry

    @staticmethod
    def release(entry: ModelEntry) -> None:
        entry.in_flight -= 1
        if entry.in_flight == 0:
            entry.idle.set()

    async def load(self, name: str, source: str, locate: Callable[[], Awaitable[Path]], device: str, dtype: str,
                   owner: str = SHARED_OWNER, limits: TenantLimits | None = None) -> tuple[ModelEntry, bool]:
        """Load `source` as `owner`'s model `name` (within its loaded_models quota); `locate` gives the checkpoint
        directory (it may download it)."""
        validate_name(name)
        if self.draining:
            raise errors.UnavailableError("the server is shutting down")
        key = model_key(owner, name)
        existing = self.models.get(key)
        if existing is not None and existing.state is State.UNLOADING:
            raise errors.UnavailableError(f"model {name!r} is being unloaded ({existing.in_flight} requests still "
                                          "running); load it again once it is gone")
        if existing is not None and existing.state is not State.FAILED:
            if existing.source != source:
                raise errors.AlreadyExistsError(f"model {name!r} is already loaded from {existing.source}")
            await existing.loaded.wait()
            if existing.state is State.FAILED:  # type: ignore[comparison-overlap]  # changed while waiting
                raise errors.FailedPreconditionError(f"model {name!r} failed to load: {existing.error}")
            return existing, False
        if limits is not None and owner != SHARED_OWNER:
            own = sum(e.owner == owner and e.state is not State.FAILED for e in self.models.values())
            limits.check(owner, "loaded_models", own)
        held = sum(e.state is not State.FAILED for e in self.models.values())
        if held >= self.settings.max_models:
            raise errors.ResourceExhaustedError(f"{held} models are loaded, the limit is {self.settings.max_models}")
        torch_device, torch_dtype = resolve_device_dtype(device or self.settings.device,
                                                         dtype or self.settings.dtype)
        entry = ModelEntry(name=key, source=source, owner=owner, device=torch_device,
                           dtype=str(torch_dtype).split(".")[-1] if torch_dtype else "auto")
        self.models[key] = entry
        await self._set_health(key, False)
        await self._load_into(entry, locate, torch_dtype)
        await self._set_health(key, True)
        return entry, True

    async def _load_into(self, entry: ModelEntry, locate: Callable[[], Awaitable[Path]],
                         dtype: torch.dtype | None) -> None:
        """Read the checkpoint and start its engine, off the event loop; a failure marks the entry FAILED. Shapes
        this host has not measured yet are served with the defaults while they are timed in the background."""
        started = time.monotonic()
        try:
            path = await locate()
            entry.checkpoint = await asyncio.to_thread(load_checkpoint, path, entry.device, dtype or torch.float32)
            model = entry.checkpoint.model
            threads = torch.get_num_threads()  # the server's count: this event-loop thread's, set at start-up
            choice, entry.calibration = await asyncio.to_thread(self.planner.initial_choice, model, dtype is None,
                                                                threads)
            self._serve(entry, await self.planner.start(entry.name, entry.checkpoint, choice, threads))
            entry.scorer = ScoreBatcher(entry.checkpoint, entry.executor, self.settings.score_batch_tokens)
        except BaseException as exc:
            entry.state, entry.error = State.FAILED, str(exc) or type(exc).__name__
            entry.loaded.set()
            self._forget_old_failures()
            log.warning("loading model %s from %s failed: %s", entry.name, entry.source, entry.error)
            raise
        entry.state, entry.loaded_time = State.READY, datetime.now(UTC)
        entry.loaded.set()
        self.metrics.load_seconds.labels(model=entry.name).observe(time.monotonic() - started)
        self._count_ready()
        if entry.calibration is CalibrationState.PENDING:
            entry.calibrating = asyncio.create_task(self._calibrate(entry, model, dtype is None, threads))

    def _forget_old_failures(self) -> None:
        """List the newest FAILED_LISTED failed loads (with their errors); older ones are forgotten, so a client that
        keeps loading bad checkpoints cannot grow the list without limit."""
        failed = [e for e in self.models.values() if e.state is State.FAILED]
        for entry in failed[:-FAILED_LISTED]:
            del self.models[entry.name]
            entry.executor.shutdown(wait=False)

    @staticmethod
    def _serve(entry: ModelEntry, serving: Serving) -> None:
        """Make `serving` the entry's engine and weights (Score, GetAttention and new requests use them)."""
        assert entry.checkpoint is not None
        entry.engine, entry.checkpoint.model, entry.float32_model = serving.engine, serving.model, serving.float32_model
        entry.dtype = str(serving.model.wte.weight.dtype).split(".")[-1]
        policy = serving.engine.policy
        below = f" from decode batch {policy.narrow_from}, float32 below" if policy.narrow_from > 1 else ""
        log.info("model %s served (%s on %s, %s weights%s, %s KV cache, %s; calibration %s)", entry.name,
                 entry.source, entry.device, entry.dtype, below, str(serving.engine.cache.k.dtype).split(".")[-1],
                 policy.describe_threads(), entry.calibration.value)

    async def _calibrate(self, entry: ModelEntry, model: GPT, measure_dtype: bool, threads: int) -> None:
        """Time the decode step in the background (one model at a time: two would time each other), then serve
        new requests with the measured plan; the defaults' engine finishes its requests and stops."""
        try:
            future = self._calibration_worker.submit(self.planner.measure, model, measure_dtype, threads)
            choice = await asyncio.wrap_future(future)
            if entry.state is not State.READY or entry.checkpoint is None or entry.engine is None:
                return
            before = entry.engine
            serving = await self.planner.start(entry.name, entry.checkpoint, choice, threads, before.max_batch)
        except Exception:
            log.exception("calibrating model %s failed; it keeps the default decode plan", entry.name)
            entry.calibration = CalibrationState.FAILED
            return
        entry.calibration = CalibrationState.MEASURED
        if entry.state is not State.READY or same_plan(before, serving.engine):
            await asyncio.to_thread(serving.engine.close)  # unloaded meanwhile, or nothing changes
            return
        self._serve(entry, serving)
        entry.retiring.append(before)
        await asyncio.to_thread(before.close)  # after its own requests (new ones go to the new engine)
        entry.retiring.remove(before)

    async def unload(self, name: str, wait: float) -> int:
        """Refuse new requests at once, give in-flight ones up to `wait` seconds, and return how many still run.

        Those go on to finish (they are not cancelled); the model stays UNLOADING until the last one ends and is
        freed then, so the call never holds its caller for a long generation (issue 23: 31 s past a 30 s deadline).
        """
        entry = self.get(name if "/" in name else validate_name(name))  # "tenant/name": an admin's reach
        check_unloadable(entry)
        if entry.state is State.LOADING:
            raise errors.FailedPreconditionError(f"model {name!r} is still loading; unload it once it is ready")
        if entry.state is not State.UNLOADING:
            entry.state = State.UNLOADING
            await self._set_health(entry.name, False)
            self._count_ready()
            entry.freeing = asyncio.create_task(self._free_when_idle(entry))
        assert entry.freeing is not None
        await asyncio.wait({entry.freeing}, timeout=wait)  # a timeout leaves the task running
        return entry.in_flight

    async def _free_when_idle(self, entry: ModelEntry) -> None:
        await entry.idle.wait()
        if self.models.get(entry.name) is entry:
            del self.models[entry.name]
            await self._close(entry)

    async def _close(self, entry: ModelEntry) -> None:
        if entry.calibrating is not None:
            entry.calibrating.cancel()
        if entry.engine is not None:
            await asyncio.to_thread(entry.engine.close)
        entry.executor.shutdown(wait=False)
        entry.engine = entry.checkpoint = entry.scorer = None

    async def drain(self, grace: float) -> None:
        """Shutdown: refuse new work, give in-flight requests up to `grace` seconds, then stop the engines."""
        self.draining = True
        self._calibration_worker.shutdown(wait=False, cancel_futures=True)
        entries = list(self.models.values())
        for entry in entries:
            if entry.freeing is not None:
                entry.freeing.cancel()  # drain frees every model itself
        for entry in entries:
            await self._set_health(entry.name, False)
        waits = [asyncio.ensure_future(e.idle.wait()) for e in entries]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for task in pending:
                task.cancel()
        for entry in entries:
            for engine in [*entry.retiring, *([entry.engine] if entry.engine else [])]:
                engine.cancel_all()
            await self._close(entry)
        self.models.clear()
        self._count_ready()

    def _count_ready(self) -> None:
        self.metrics.models_loaded.set(sum(e.state is State.READY for e in self.models.values()))

    async def _set_health(self, name: str, serving: bool) -> None:
        if "/" in name:  # a tenant's own model: the open health service must not tell others it exists
            return
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(name, status)
