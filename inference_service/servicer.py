"""InferenceService handlers: validate, convert, call the registry and engines, convert back."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import grpc

from chargpt import errors
from chargpt.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from chargpt.wire.checkpoint_kinds import KIND_NAMES
from inference_service import scoring
from inference_service.convert import build_requests, logprobs_to_proto, model_to_proto, summary_to_proto
from inference_service.fetch import download_checkpoint, trainer_credentials
from inference_service.metrics import InferenceMetrics
from inference_service.registry import TRAINER_CACHE, ModelEntry, ModelRegistry
from inference_service.requests import Chunk, Finish, GenRequest, Summary
from inference_service.settings import InferenceSettings

T = TypeVar("T")
MESSAGE_OVERHEAD = 64 * 1024  # room for the tokens and framing next to the attention tensor


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Every RPC of the v1 inference API."""

    def __init__(self, settings: InferenceSettings, registry: ModelRegistry, metrics: InferenceMetrics) -> None:
        self.settings, self.registry, self.metrics = settings, registry, metrics
        self.trainer_credentials = trainer_credentials(settings.trainer_tls_ca_file, settings.trainer_tls_cert_file,
                                                       settings.trainer_tls_key_file)

    # ---- models ----

    async def LoadModel(self, request: inference_pb2.LoadModelRequest,
                        context: grpc.aio.ServicerContext) -> inference_pb2.LoadModelResponse:
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
                    self.settings.trainer_address, self.settings.trainer_auth_token, ref.job_id, ref.kind,
                    self.settings.models_dir / TRAINER_CACHE, self.settings.download_chunk_bytes,
                    self.trainer_credentials)
        else:
            raise errors.InvalidArgumentError("source", "give checkpoint_path or trainer_checkpoint")
        entry, loaded = await self.registry.load(request.name, source, locate, request.device, request.dtype)
        return inference_pb2.LoadModelResponse(model=model_to_proto(entry), loaded=loaded)

    async def UnloadModel(self, request: inference_pb2.UnloadModelRequest,
                          context: grpc.aio.ServicerContext) -> inference_pb2.UnloadModelResponse:
        await self.registry.unload(request.name)
        return inference_pb2.UnloadModelResponse()

    async def ListModels(self, request: inference_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> inference_pb2.ListModelsResponse:
        entries = sorted(self.registry.models.values(), key=lambda e: e.name)
        return inference_pb2.ListModelsResponse(models=[model_to_proto(e) for e in entries])

    async def GetModel(self, request: inference_pb2.GetModelRequest,
                       context: grpc.aio.ServicerContext) -> inference_pb2.GetModelResponse:
        if not request.name:
            raise errors.InvalidArgumentError("name", "is required")
        return inference_pb2.GetModelResponse(model=model_to_proto(self.registry.get(request.name)))

    # ---- generation ----

    async def GenerateStream(self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        entry, jobs = self.start_generation(request, context.time_remaining())
        async with contextlib.aclosing(generation_chunks(self.registry, entry, jobs)) as chunks:
            async for chunk in chunks:
                message = inference_pb2.GenerateStreamResponse(index=chunk.index, text=chunk.text,
                                                               logprobs=logprobs_to_proto(chunk.logprobs))
                if chunk.summary is not None:
                    message.summary.CopyFrom(summary_to_proto(chunk.summary))
                yield message

    async def Generate(self, request: inference_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> inference_pb2.GenerateResponse:
        entry, jobs = self.start_generation(request, context.time_remaining())
        choices = [inference_pb2.GenerateChoice(index=i) for i in range(len(jobs))]
        async with contextlib.aclosing(generation_chunks(self.registry, entry, jobs)) as chunks:
            async for chunk in chunks:
                choice = choices[chunk.index]
                choice.text += chunk.text
                choice.logprobs.extend(logprobs_to_proto(chunk.logprobs))
                if chunk.summary is not None:
                    choice.summary.CopyFrom(summary_to_proto(chunk.summary))
        first = choices[0]
        return inference_pb2.GenerateResponse(text=first.text, summary=first.summary, logprobs=first.logprobs,
                                              choices=choices)

    def start_generation(self, request: inference_pb2.GenerateRequest,
                         time_remaining: float | None) -> tuple[ModelEntry, list[GenRequest]]:
        """Validate and queue a request's samples (shared by gRPC and HTTP); pair with generation_chunks."""
        model_name = request.model
        entry = self.registry.acquire(model_name)
        try:
            assert entry.checkpoint is not None and entry.engine is not None
            jobs = build_requests(request, entry.checkpoint.tokenizer, entry.checkpoint.model.config.block_size,
                                  self.settings.max_new_tokens_limit, time_remaining)
            entry.engine.submit(*jobs)
        except errors.ChargptError as exc:
            reason = "queue_full" if isinstance(exc, errors.ResourceExhaustedError) else "rejected"
            self.metrics.failure.labels(model=model_name, reason=reason).inc()
            self.registry.release(entry)
            raise
        except BaseException:
            self.registry.release(entry)
            raise
        return entry, jobs

    # ---- scoring and attention ----

    async def Score(self, request: inference_pb2.ScoreRequest,
                    context: grpc.aio.ServicerContext) -> inference_pb2.ScoreResponse:
        entry = self.registry.acquire(request.model)
        try:
            assert entry.checkpoint is not None
            block = entry.checkpoint.model.config.block_size
            if len(request.text) > self.settings.max_score_chars:
                raise errors.ResourceExhaustedError(f"text has {len(request.text)} characters; the limit is "
                                                    f"{self.settings.max_score_chars}")
            if len(request.text) < 2:
                raise errors.InvalidArgumentError("text", "needs at least 2 characters")
            stride = request.stride if request.HasField("stride") else block
            if not 1 <= stride <= block:
                raise errors.InvalidArgumentError("stride", f"must be 1..{block} (block_size), got {stride}")
            assert entry.scorer is not None
            # Encoding and scoring run on the model's worker, batched with other waiting Score requests.
            result = await entry.scorer.score(request.text, stride, request.include_token_logprobs)
            if not math.isfinite(result.mean_nll):  # finite logits always give a finite log-softmax
                raise errors.NonFiniteLogitsError(
                    "the model produced non-finite logits (NaN or inf) for this text, so it cannot be scored; its "
                    "weights or dtype are numerically broken (a float16 model can overflow: reload it as float32 "
                    "or bfloat16)")
            self.metrics.score_requests.labels(model=entry.name).inc()
            return inference_pb2.ScoreResponse(mean_nll=result.mean_nll, bits_per_char=result.bits_per_char,
                                               perplexity=result.perplexity, num_tokens=result.num_tokens,
                                               token_logprobs=result.token_logprobs)
        finally:
            self.registry.release(entry)

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
            weights = await self._in_model_thread(entry, scoring.attention, entry.checkpoint.model, ids, layers,
                                                  heads)
            np_dtype = "<f2" if dtype == common_pb2.TENSOR_DTYPE_FLOAT16 else "<f4"
            data = weights.numpy().astype(np_dtype).tobytes()
            self.metrics.attention_requests.labels(model=entry.name).inc()
            tensor = common_pb2.Tensor(shape=list(weights.shape), dtype=dtype, data=data)
            return inference_pb2.GetAttentionResponse(tokens=list(request.text), layers=layers, heads=heads,
                                                      weights=tensor)
        finally:
            self.registry.release(entry)

    @staticmethod
    async def _in_model_thread(entry: ModelEntry, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(entry.executor, fn, *args)


def _selection(field: str, chosen: list[int], count: int) -> list[int]:
    if not chosen:
        return list(range(count))
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise errors.InvalidArgumentError(field, f"{bad[:5]} out of range 0..{count - 1}")
    return chosen


async def generation_chunks(registry: ModelRegistry, entry: ModelEntry,
                            jobs: list[GenRequest]) -> AsyncGenerator[Chunk, None]:
    """Chunks until every sample has finished (each carries everything its sample produced since the previous
    one, see Outbox); closing it early cancels the samples (the engine drops them at its next step) and
    releases the model."""
    try:
        remaining = len(jobs)
        while remaining:
            for chunk in await jobs[0].outbox.take():
                if chunk.summary is not None:
                    _check(chunk.summary)
                    remaining -= 1
                yield chunk
    finally:
        for job in jobs:
            job.cancel()  # a no-op when finished
        registry.release(entry)


def _check(summary: Summary) -> None:
    """Raise the error that ended a generation (deadline, engine failure)."""
    if summary.finish is Finish.DEADLINE:
        raise TimeoutError("the request's deadline passed")
    if summary.finish is Finish.ERROR:
        if isinstance(summary.error, errors.NonFiniteLogitsError):
            raise summary.error  # FAILED_PRECONDITION: the model, not the request or the server, is at fault
        raise errors.ChargptError(f"generation failed: {summary.error}")
