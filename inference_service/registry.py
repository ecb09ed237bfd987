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
from chargpt.core.calibration import Calibrator
from chargpt.core.checkpoint import Checkpoint, load_checkpoint
from chargpt.core.config import ModelConfig
from chargpt.core.device import resolve_device, set_torch_threads
from chargpt.core.model import GPT
from inference_service.decode_policy import DEFAULT_PARALLEL_FROM, DecodePolicy
from inference_service.engine import Engine
from inference_service.kv_cache_sizing import available_memory, size_cache
from inference_service.metrics import InferenceMetrics
from inference_service.score_batcher import ScoreBatcher
from inference_service.serving_choices import DecodeChoice, calibrated_decode
from inference_service.settings import InferenceSettings

log = logging.getLogger(__name__)
NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TRAINER_CACHE = ".trainer-cache"


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

    name: str
    source: str
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
        entry = self.models.get(name)
        if entry is None:
            raise errors.NotFoundError(f"no model named {name!r} is loaded")
        return entry

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

    async def load(self, name: str, source: str, locate: Callable[[], Awaitable[Path]], device: str, dtype: str
                   ) -> tuple[ModelEntry, bool]:
        """Load `source` under `name`; `locate` gives the checkpoint directory (it may download it)."""
        validate_name(name)
        if self.draining:
            raise errors.UnavailableError("the server is shutting down")
        existing = self.models.get(name)
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
        held = sum(e.state is not State.FAILED for e in self.models.values())
        if held >= self.settings.max_models:
            raise errors.ResourceExhaustedError(f"{held} models are loaded, the limit is {self.settings.max_models}")
        torch_device, torch_dtype = resolve_device_dtype(device or self.settings.device,
                                                         dtype or self.settings.dtype)
        entry = ModelEntry(name=name, source=source, device=torch_device,
                           dtype=str(torch_dtype).split(".")[-1] if torch_dtype else "auto")
        self.models[name] = entry
        await self._set_health(name, False)
        await self._load_into(entry, locate, torch_dtype)
        await self._set_health(name, True)
        return entry, True

    async def _load_into(self, entry: ModelEntry, locate: Callable[[], Awaitable[Path]],
                         dtype: torch.dtype | None) -> None:
        """Read the checkpoint and start its engine, off the event loop; a failure marks the entry FAILED."""
        started = time.monotonic()
        try:
            path = await locate()
            entry.checkpoint = await asyncio.to_thread(load_checkpoint, path, entry.device, dtype or torch.float32)
            model = entry.checkpoint.model
            threads = torch.get_num_threads()  # the server's count: this event-loop thread's, set at start-up
            choice = await asyncio.to_thread(self._decode_choice, model, dtype is None, threads)
            # Small batches decode faster in float32 where measured so: they keep a float32 copy of the weights.
            float32_model = entry.float32_model = copy.deepcopy(model) if choice.narrow_from > 1 else None
            if choice.weight_dtype != "float32":
                model.to(DTYPES[choice.weight_dtype])
            weight = model.wte.weight
            entry.dtype = str(weight.dtype).split(".")[-1]
            cache_dtype = DTYPES.get(self.settings.kv_cache_dtype) or DTYPES.get(choice.cache_dtype)
            rows = self._batch_rows(model.config, cache_dtype or weight.dtype, weight.device)
            policy = self._policy(choice, threads, rows, weight.device.type)
            entry.engine = await asyncio.to_thread(
                Engine, entry.name, model, entry.checkpoint.tokenizer.vocabulary, rows,
                self.settings.max_queue, self.metrics, cache_dtype, self.settings.window_slide, policy,
                self.settings.decode_attention, self.settings.stream_interval_ms / 1000, float32_model)
            entry.scorer = ScoreBatcher(entry.checkpoint, entry.executor, self.settings.score_batch_tokens)
        except BaseException as exc:
            entry.state, entry.error = State.FAILED, str(exc) or type(exc).__name__
            entry.loaded.set()
            log.warning("loading model %s from %s failed: %s", entry.name, entry.source, entry.error)
            raise
        entry.state, entry.loaded_time = State.READY, datetime.now(UTC)
        entry.loaded.set()
        self.metrics.load_seconds.labels(model=entry.name).observe(time.monotonic() - started)
        self._count_ready()
        below = f" from decode batch {policy.narrow_from}, float32 below" if policy.narrow_from > 1 else ""
        log.info("model %s ready (%s on %s, %s weights%s, %s KV cache, %s)", entry.name, entry.source, entry.device,
                 entry.dtype, below, cache_dtype or weight.dtype, policy.describe_threads())

    def _policy(self, choice: DecodeChoice, threads: int, rows: int, device_type: str) -> DecodePolicy:
        """The measured plan with the settings' overrides, bounded by what this cache and device can run; an
        override that cannot apply as given is logged."""
        s = self.settings
        split = choice.split_from if s.split_decode_from is None else s.split_decode_from
        if device_type != "cpu" or max(split, threads) > rows:
            split = 0  # row groups are a CPU threading choice, and need a batch the cache can hold
        policy = DecodePolicy(threads, s.parallel_decode_from or choice.parallel_from, choice.narrow_from, split,
                              max_batch=rows)
        if s.split_decode_from and policy.reported_split_from != s.split_decode_from:
            log.warning("--split-decode-from %d applies as %d (%d torch threads, each group needs a row; %d cache "
                        "rows; device %s; 0: never)", s.split_decode_from, policy.reported_split_from, threads,
                        rows, device_type)
        if s.parallel_decode_from and threads > 1 and policy.reported_parallel_from != s.parallel_decode_from:
            log.warning("--parallel-decode-from %d is never reached: the cache holds %d rows", s.parallel_decode_from,
                        rows)
        return policy

    def _decode_choice(self, model: GPT, measure_dtype: bool, threads: int) -> DecodeChoice:
        """Dtypes and thread policy: measured on CPU (cached per host), else the model's dtype and the default."""
        if model.lm_head.weight.device.type != "cpu":
            return DecodeChoice(weight_dtype="float32", cache_dtype="", parallel_from=DEFAULT_PARALLEL_FROM)
        choice = calibrated_decode(Calibrator(self.settings.resolved_calibration_dir()), model,
                                   min(self.settings.max_batch_size or 64, 64), threads)
        return choice if measure_dtype else choice.model_copy(update={"weight_dtype": "float32", "cache_dtype": "",
                                                                        "narrow_from": 1})

    def _batch_rows(self, config: ModelConfig, cache_dtype: torch.dtype, device: torch.device) -> int:
        """Cache rows for a model: max_batch_size (default 256) within its KV-cache budget (memory.size_cache)."""
        s = self.settings
        available = available_memory(device) if s.max_kv_cache_bytes is None else 0
        size = size_cache(config, cache_dtype, s.max_batch_size, s.max_kv_cache_bytes, s.kv_cache_memory_fraction,
                          available)
        log.info("KV cache: %d rows of %d KiB (%d MiB, bound by %s; budget %d MiB)", size.rows,
                 size.row_bytes >> 10, size.cache_bytes >> 20, size.bound_by, size.budget_bytes >> 20)
        return size.rows

    async def unload(self, name: str, wait: float) -> int:
        """Refuse new requests at once, give in-flight ones up to `wait` seconds, and return how many still run.

        Those go on to finish (they are not cancelled); the model stays UNLOADING until the last one ends and is
        freed then, so the call never holds its caller for a long generation (issue 23: 31 s past a 30 s deadline).
        """
        entry = self.get(validate_name(name))
        if entry.state is State.LOADING:
            raise errors.FailedPreconditionError(f"model {name!r} is still loading; unload it once it is ready")
        if entry.state is not State.UNLOADING:
            entry.state = State.UNLOADING
            await self._set_health(name, False)
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
        if entry.engine is not None:
            await asyncio.to_thread(entry.engine.close)
        entry.executor.shutdown(wait=False)
        entry.engine = entry.checkpoint = entry.scorer = None

    async def drain(self, grace: float) -> None:
        """Shutdown: refuse new work, give in-flight requests up to `grace` seconds, then stop the engines."""
        self.draining = True
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
            if entry.engine is not None:
                entry.engine.cancel_all()
            await self._close(entry)
        self.models.clear()
        self._count_ready()

    def _count_ready(self) -> None:
        self.metrics.models_loaded.set(sum(e.state is State.READY for e in self.models.values()))

    async def _set_health(self, name: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(name, status)
