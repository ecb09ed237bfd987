"""InferenceService handlers: validate, convert, call the registry and engines, convert back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import torch

from chargpt import errors
from chargpt.server.tenancy.audit import AuditLog, outcome_of
from chargpt.server.tenancy.interceptor import bearer_key
from chargpt.server.tenancy.principal import require_write
from chargpt.server.tenancy.scopes import Scope
from chargpt.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from chargpt.wire.checkpoint_kinds import KIND_NAMES
from inference_service import scoring
from inference_service.fetch import download_checkpoint, trainer_credentials
from inference_service.grpc_api.messages import logprobs_to_proto, model_to_proto, sampling_params, summary_to_proto
from inference_service.metrics import InferenceMetrics
from inference_service.ownership import name_for, visible
from inference_service.registry import TRAINER_CACHE, ModelEntry, ModelRegistry
from inference_service.service import Generation, InferenceService
from inference_service.settings import InferenceSettings

T = TypeVar("T")
MESSAGE_OVERHEAD = 64 * 1024  # room for the tokens and framing next to the attention tensor
UNLOAD_REPLY_MARGIN = 1.0  # seconds UnloadModel keeps in hand to reply before its caller's deadline

# Every RPC's tenancy scope (tests/tenancy asserts each RPC has one): models belong to the tenant that loaded them.
RPC_SCOPES: dict[str, Scope] = {
    "LoadModel": Scope.CREATE, "UnloadModel": Scope.OWN, "ListModels": Scope.OWN, "GetModel": Scope.OWN,
    "GenerateStream": Scope.OWN, "Generate": Scope.OWN, "Score": Scope.OWN, "GetAttention": Scope.OWN,
}


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Every RPC of the v1 inference API; generation and scoring adapt InferenceService to protos."""

    def __init__(self, settings: InferenceSettings, registry: ModelRegistry, metrics: InferenceMetrics) -> None:
        self.settings, self.registry, self.metrics = settings, registry, metrics
        self.service = InferenceService(settings, registry, metrics)
        self.audit = AuditLog(settings.audit_log)
        self.trainer_credentials = trainer_credentials(settings.trainer_tls_ca_file, settings.trainer_tls_cert_file,
                                                       settings.trainer_tls_key_file)

    # ---- models ----

    async def LoadModel(self, request: inference_pb2.LoadModelRequest,
                        context: grpc.aio.ServicerContext) -> inference_pb2.LoadModelResponse:
        """As the caller: its own model, counted against its loaded_models quota. A checkpoint_path reads the
        server's models root, which no tenant owns: admins only (with no keys configured everyone is admin)."""
        try:
            caller = require_write("LoadModel")
            if request.WhichOneof("source") == "checkpoint_path" and not caller.is_admin:
                raise errors.PermissionDeniedError("loading a checkpoint_path needs an admin key; load your "
                                                   "trainer job's checkpoint with trainer_checkpoint instead")
            reply = await self.load(request, caller.tenant, self._trainer_key(context))
        except errors.ChargptError as exc:
            self.audit.record("load", "model", request.name, outcome=outcome_of(exc), source=_source(request))
            raise
        self.audit.record("load", "model", request.name, source=reply.model.source, loaded=reply.loaded)
        return reply

    def _trainer_key(self, context: grpc.aio.ServicerContext | None) -> str | None:
        """The key to download a trainer checkpoint with: the caller's own when keys are configured (the trainer
        then decides, by its own isolation, whether this tenant may read that job), else trainer_auth_token."""
        if self.settings.keys_file is None or context is None:
            return self.settings.trainer_auth_token
        header = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        return bearer_key(header) or None

    async def load(self, request: inference_pb2.LoadModelRequest, owner: str,
                   trainer_key: str | None) -> inference_pb2.LoadModelResponse:
        """Load the request's checkpoint as `owner`'s model (SHARED_OWNER: a --preload model)."""
        source_kind = request.WhichOneof("source")
        if source_kind == "checkpoint_path":
            path = self.registry.resolve_path(request.checkpoint_path)
            relative = path.relative_to(self.settings.models_dir.resolve())
            source = f"path:{relative.as_posix()}"

            async def locate() -> Path:
                return path
        elif source_kind == "trainer_checkpoint":
            ref = request.trainer_checkpoint
            if ref.kind not in KIND_NAMES:
                raise errors.InvalidArgumentError("trainer_checkpoint.kind", f"unknown checkpoint kind {ref.kind}")
            kind = KIND_NAMES[ref.kind]
            # no kind: the trainer's default (best if any), written as the preload syntax writes it
            source = f"trainer:{ref.job_id}" + (f"/{kind}" if kind else "")

            async def locate() -> Path:
                return await download_checkpoint(
                    self.settings.trainer_address, trainer_key, ref.job_id, ref.kind,
                    self.settings.models_dir / TRAINER_CACHE, self.settings.download_chunk_bytes,
                    self.trainer_credentials)
        else:
            raise errors.InvalidArgumentError("source", "give checkpoint_path or trainer_checkpoint")
        limits = self.service.policy.limits(owner)
        entry, loaded = await self.registry.load(request.name, source, locate, request.device, request.dtype,
                                                 owner, limits)
        return inference_pb2.LoadModelResponse(model=model_to_proto(entry), loaded=loaded)

    async def UnloadModel(self, request: inference_pb2.UnloadModelRequest,
                          context: grpc.aio.ServicerContext) -> inference_pb2.UnloadModelResponse:
        wait = self.settings.unload_wait_seconds
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None:  # answer before the caller's deadline, whatever is still running
            wait = min(wait, max(0.0, remaining - UNLOAD_REPLY_MARGIN))
        require_write("UnloadModel")
        in_flight = await self.registry.unload(request.name, wait)
        self.audit.record("unload", "model", request.name, requests_in_flight=in_flight)
        return inference_pb2.UnloadModelResponse(requests_in_flight=in_flight)

    async def ListModels(self, request: inference_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> inference_pb2.ListModelsResponse:
        entries = visible(list(self.registry.models.values()))
        return inference_pb2.ListModelsResponse(models=[model_to_proto(e) for e in entries])

    async def GetModel(self, request: inference_pb2.GetModelRequest,
                       context: grpc.aio.ServicerContext) -> inference_pb2.GetModelResponse:
        if not request.name:
            raise errors.InvalidArgumentError("name", "is required")
        return inference_pb2.GetModelResponse(model=model_to_proto(self.registry.get(request.name)))

    # ---- generation ----

    async def GenerateStream(self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        generation = self._generation(request, context)
        async with contextlib.aclosing(generation.chunks()) as chunks:
            async for chunk in chunks:
                message = inference_pb2.GenerateStreamResponse(index=chunk.index, text=chunk.text,
                                                               logprobs=logprobs_to_proto(chunk.logprobs))
                if chunk.summary is not None:
                    message.summary.CopyFrom(summary_to_proto(chunk.summary))
                yield message

    async def Generate(self, request: inference_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> inference_pb2.GenerateResponse:
        generation = self._generation(request, context)
        choices = [inference_pb2.GenerateChoice(index=i) for i in range(len(generation.jobs))]
        async with contextlib.aclosing(generation.chunks()) as chunks:
            async for chunk in chunks:
                choice = choices[chunk.index]
                choice.text += chunk.text
                choice.logprobs.extend(logprobs_to_proto(chunk.logprobs))
                if chunk.summary is not None:
                    choice.summary.CopyFrom(summary_to_proto(chunk.summary))
        first = choices[0]
        return inference_pb2.GenerateResponse(text=first.text, summary=first.summary, logprobs=first.logprobs,
                                              choices=choices)

    def _generation(self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext) -> Generation:
        with self.service.rejections(request.model):
            params = sampling_params(request)
        return self.service.generate(request.model, request.prompt, params, context.time_remaining(),
                                     request.priority)

    # ---- scoring and attention ----

    async def Score(self, request: inference_pb2.ScoreRequest,
                    context: grpc.aio.ServicerContext) -> inference_pb2.ScoreResponse:
        result = await self.service.score(request.model, request.text,
                                          request.stride if request.HasField("stride") else None,
                                          request.include_token_logprobs)
        return inference_pb2.ScoreResponse(mean_nll=result.mean_nll, bits_per_char=result.bits_per_char,
                                           perplexity=result.perplexity, num_tokens=result.num_tokens,
                                           token_logprobs=result.token_logprobs)

    async def GetAttention(self, request: inference_pb2.GetAttentionRequest,
                           context: grpc.aio.ServicerContext) -> inference_pb2.GetAttentionResponse:
        entry = self.registry.acquire(request.model)
        try:
            assert entry.checkpoint is not None
            config = entry.checkpoint.model.config
            if not 1 <= len(request.text) <= config.block_size:
                raise errors.InvalidArgumentError("text", f"must be 1..{config.block_size} characters")
            layers = _selection("layers", list(request.layers), config.n_layer)
            heads = _selection("heads", list(request.heads), config.n_head)
            dtype = request.dtype or common_pb2.TENSOR_DTYPE_FLOAT16
            if dtype not in (common_pb2.TENSOR_DTYPE_FLOAT16, common_pb2.TENSOR_DTYPE_FLOAT32):
                raise errors.InvalidArgumentError("dtype", f"unknown tensor dtype {request.dtype}")
            ids = entry.checkpoint.tokenizer.encode(request.text, field="text")
            T = len(ids)
            size = len(layers) * len(heads) * T * T * (2 if dtype == common_pb2.TENSOR_DTYPE_FLOAT16 else 4)
            cap = min(self.settings.max_attention_bytes, self.settings.max_message_bytes - MESSAGE_OVERHEAD)
            if size > cap:
                raise errors.ResourceExhaustedError(f"the attention tensor would be {size} bytes; the limit is "
                                                    f"{cap} (select fewer layers/heads or use FLOAT16)")
            float32 = dtype == common_pb2.TENSOR_DTYPE_FLOAT32  # computed in float32, not only sent as float32
            weights = await self._in_model_thread(entry, _attention, entry, float32, ids, layers, heads)
            np_dtype = "<f2" if dtype == common_pb2.TENSOR_DTYPE_FLOAT16 else "<f4"
            data = weights.numpy().astype(np_dtype).tobytes()
            self.metrics.attention_requests.labels(model=entry.name).inc()
            self.audit.record("attention", "model", name_for(entry), layers=layers, heads=heads, chars=T)
            tensor = common_pb2.Tensor(shape=list(weights.shape), dtype=dtype, data=data)
            return inference_pb2.GetAttentionResponse(tokens=list(request.text), layers=layers, heads=heads,
                                                      weights=tensor)
        finally:
            self.registry.release(entry)

    @staticmethod
    async def _in_model_thread(entry: ModelEntry, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(entry.executor, fn, *args)


def _source(request: inference_pb2.LoadModelRequest) -> str:
    """What a refused LoadModel asked for, for the audit trail."""
    if request.WhichOneof("source") == "trainer_checkpoint":
        return f"trainer:{request.trainer_checkpoint.job_id}"
    return f"path:{request.checkpoint_path}"


def _attention(entry: ModelEntry, float32: bool, ids: list[int], layers: list[int], heads: list[int]
               ) -> torch.Tensor:
    """The attention dump on the model's worker, from float32 weights when `float32` (a bf16 softmax's rows sum
    to 1 only within about 2e-3)."""
    assert entry.checkpoint is not None
    return scoring.attention(entry.float32_weights() if float32 else entry.checkpoint.model, ids, layers, heads)


def _selection(field: str, chosen: list[int], count: int) -> list[int]:
    if not chosen:
        return list(range(count))
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise errors.InvalidArgumentError(field, f"{bad[:5]} out of range 0..{count - 1}")
    return chosen

