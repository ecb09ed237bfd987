"""asyncio clients: AsyncTrainerClient, AsyncInferenceClient and AsyncClient (same ops, an awaitable call layer)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from chargpt.v1 import inference_pb2_grpc, trainer_pb2_grpc
from chargpt_client import from_proto, ops
from chargpt_client import types as t
from chargpt_client.calls import DEFAULT, Deadline, GenerationState, Timeout, retry_delay, retry_policy
from chargpt_client.errors import ChargptClientError, from_rpc_error
from chargpt_client.options import ClientOptions, aio_channel, inference_address, trainer_address
from chargpt_client.training import TrainingOptions
from chargpt_client.transfer import (
    UPLOAD_CHUNK_BYTES,
    CorpusSource,
    ModelUpload,
    UploadSource,
    consume_download_async,
)

T = TypeVar("T")


class _AsyncService:
    """An aio channel, a stub and the awaitable call layer (deadlines, retries, metadata, typed errors)."""

    def __init__(self, address: str, options: ClientOptions | None, stub_factory: Callable[[Any], Any]):
        self.address = address
        self.options = options or ClientOptions.from_env()
        self._channel = aio_channel(address, self.options)
        self._stub = stub_factory(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, op: ops.Unary[T], timeout: Timeout = DEFAULT) -> T:
        return op.convert(await self._invoke(op.method, lambda: op.request, op.idempotent, timeout))

    async def _invoke(self, method: str, request: Callable[[], Any], retry_safe: bool, timeout: Timeout) -> Any:
        deadline = Deadline(timeout, self.options)
        delays = retry_policy(self.options, retry_safe).delays()
        while True:
            try:
                return await getattr(self._stub, method)(request(), timeout=deadline.remaining(),
                                                         metadata=self.options.metadata())
            except grpc.RpcError as error:
                await asyncio.sleep(retry_delay(error, delays, deadline))

    async def _stream(self, method: str, request: Callable[[], Message], resumable: bool,
                      timeout: Timeout) -> AsyncGenerator[Any, None]:
        """Server-stream messages; retried before the first message, or throughout when `resumable`."""
        deadline = Deadline(timeout, self.options)
        policy = self.options.retry
        delays = policy.delays()
        while True:
            received = False
            call = getattr(self._stub, method)(request(), timeout=deadline.remaining(),
                                               metadata=self.options.metadata())
            try:
                async for message in call:
                    received = True
                    yield message
                return
            except grpc.RpcError as error:
                if received and not resumable:
                    raise from_rpc_error(error) from None
                delays = policy.delays() if received else delays
                await asyncio.sleep(retry_delay(error, delays, deadline))
            finally:
                call.cancel()


async def _aiter_sync(chunks: Iterable[Any]) -> AsyncIterator[Any]:
    for chunk in chunks:
        yield chunk


class AsyncTrainerClient(_AsyncService):
    """The trainer service (asyncio); methods mirror TrainerClient."""

    def __init__(self, address: str | None = None, options: ClientOptions | None = None) -> None:
        super().__init__(trainer_address(address), options, trainer_pb2_grpc.TrainerServiceStub)

    async def device_info(self, *, recalibrate: bool = False, timeout: Timeout = DEFAULT) -> t.DeviceReport:
        return await self._call(ops.get_device_info(recalibrate), timeout)

    async def upload_corpus(self, name: str, source: CorpusSource, *, description: str = "",
                            chunk_bytes: int = UPLOAD_CHUNK_BYTES, timeout: Timeout = DEFAULT) -> t.UploadResult:
        upload = UploadSource(source, chunk_bytes)
        try:
            response = await self._invoke("UploadCorpus",
                                          lambda: _aiter_sync(upload.requests(name, description)),
                                          upload.replayable, timeout)
        except ChargptClientError:
            if upload.error is not None:  # the source failed, not the server
                raise upload.error from None
            raise
        return from_proto.upload_result(response)

    async def list_corpora(self, *, timeout: Timeout = DEFAULT) -> list[t.Corpus]:
        return await self._call(ops.list_corpora(), timeout)

    async def get_corpus(self, corpus_id: str, *, timeout: Timeout = DEFAULT) -> t.Corpus:
        return await self._call(ops.get_corpus(corpus_id), timeout)

    async def read_corpus(self, corpus_id: str, split: str = "all", offset: int = 0,
                          length: int = ops.MAX_READ_CHARS, *, timeout: Timeout = DEFAULT) -> t.CorpusText:
        return await self._call(ops.read_corpus(corpus_id, split, offset, length), timeout)

    async def delete_corpus(self, corpus_id: str, *, timeout: Timeout = DEFAULT) -> None:
        await self._call(ops.delete_corpus(corpus_id), timeout)

    async def create_job(self, corpus_id: str, *, preset: str | None = None, model: t.ModelConfig | None = None,
                         training: TrainingOptions | None = None, display_name: str = "", device: str = "",
                         num_processes: int | None = None, num_nodes: int | None = None,
                         init_from: str | None = None, priority: int = 0,
                         timeout: Timeout = DEFAULT, **training_keywords: Any) -> t.TrainingJob:
        """See the sync client's create_job."""
        return await self._call(ops.create_training_job(
            corpus_id, preset=preset, model=model, training=training, display_name=display_name, device=device,
            num_processes=num_processes, num_nodes=num_nodes, init_from=init_from, priority=priority,
            **training_keywords), timeout)

    async def get_job(self, job_id: str, *, timeout: Timeout = DEFAULT) -> t.TrainingJob:
        return await self._call(ops.get_training_job(job_id), timeout)

    async def list_jobs(self, states: Iterable[str] = (), *, limit: int | None = None,
                        timeout: Timeout = DEFAULT) -> list[t.TrainingJob]:
        jobs: list[t.TrainingJob] = []
        token = ""
        while True:
            page, token = await self._call(ops.list_training_jobs_page(states, min(limit or 1000, 1000), token),
                                           timeout)
            jobs.extend(page)
            if not token or (limit is not None and len(jobs) >= limit):
                return jobs[:limit]

    async def cancel_job(self, job_id: str, *, timeout: Timeout = DEFAULT) -> t.TrainingJob:
        return await self._call(ops.cancel_training_job(job_id), timeout)

    async def resume_job(self, job_id: str, *, timeout: Timeout = DEFAULT) -> t.TrainingJob:
        return await self._call(ops.resume_training_job(job_id), timeout)

    async def watch_job(self, job_id: str, *, after_sequence: int = 0,
                        timeout: Timeout = None) -> AsyncIterator[t.JobEvent]:
        cursor = [after_sequence]  # read at each (re)connect: resume after the last event delivered
        async for message in self._stream("WatchTrainingJob", lambda: ops.watch_request(job_id, cursor[0]), True,
                                          timeout):
            event = from_proto.job_event(message)
            cursor[0] = event.sequence
            yield event

    async def list_checkpoints(self, job_id: str, *, timeout: Timeout = DEFAULT) -> list[t.Checkpoint]:
        return await self._call(ops.list_checkpoints(job_id), timeout)

    async def download_checkpoint(self, job_id: str, destination: str | os.PathLike[str], *, kind: str = "",
                                  chunk_size: int = 0, overwrite: bool = False,
                                  timeout: Timeout = DEFAULT) -> t.DownloadedCheckpoint:
        request = ops.download_request(job_id, kind, chunk_size)
        return await consume_download_async(self._stream("DownloadCheckpoint", lambda: request, False, timeout),
                                            destination, overwrite)

    async def import_model(self, format: str, path: str | os.PathLike[str], *, name: str,
                           meta: str | os.PathLike[str] | None = None, chunk_bytes: int = UPLOAD_CHUNK_BYTES,
                           timeout: Timeout = DEFAULT) -> t.ImportResult:
        """See TrainerClient.import_model."""
        upload = await asyncio.to_thread(ModelUpload, format, path, meta, chunk_bytes)  # hashes the files
        response = await self._invoke("ImportModel", lambda: _aiter_sync(upload.requests(name)), False, timeout)
        return from_proto.import_result(response)


class AsyncTextStream:
    """Generated text chunks as they arrive (async for); afterwards `.text`, `.summary` and `await .result()`.
    `await cancel()` (or leaving an `async with` block early) stops the generation on the server."""

    def __init__(self, messages: AsyncGenerator[Any, None]) -> None:
        self._messages = messages
        self._state = GenerationState()

    async def cancel(self) -> None:
        """Cancel the RPC, so the server frees the generation's batch row; `.text` keeps what arrived, `.summary`
        stays None. Nothing happens once the stream has ended."""
        await self._messages.aclose()

    async def __aenter__(self) -> AsyncTextStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        async for message in self._messages:
            text = self._state.add(message)
            if text:
                yield text

    @property
    def text(self) -> str:
        return self._state.text

    @property
    def summary(self) -> t.GenerationSummary | None:
        return self._state.summary

    async def result(self) -> t.GenerationResult:
        async for _ in self:
            pass
        return self._state.result()


class AsyncInferenceClient(_AsyncService):
    """The inference service (asyncio); methods mirror InferenceClient."""

    def __init__(self, address: str | None = None, options: ClientOptions | None = None) -> None:
        super().__init__(inference_address(address), options, inference_pb2_grpc.InferenceServiceStub)

    async def load_model(self, name: str, *, checkpoint_path: str | None = None, job_id: str | None = None,
                         kind: str = "", device: str = "", dtype: str = "",
                         timeout: Timeout = DEFAULT) -> t.LoadResult:
        return await self._call(ops.load_model(name, checkpoint_path=checkpoint_path, job_id=job_id, kind=kind,
                                               device=device, dtype=dtype), timeout)

    async def unload_model(self, name: str, *, timeout: Timeout = DEFAULT) -> None:
        await self._call(ops.unload_model(name), timeout)

    async def list_models(self, *, timeout: Timeout = DEFAULT) -> list[t.Model]:
        return await self._call(ops.list_models(), timeout)

    async def get_model(self, name: str, *, timeout: Timeout = DEFAULT) -> t.Model:
        return await self._call(ops.get_model(name), timeout)

    async def generate(self, model: str, prompt: str = "", *, timeout: Timeout = DEFAULT, priority: int = 0,
                       **sampling: Any) -> t.GenerationResult:
        request = ops.generate_request(model, prompt, priority=priority, **sampling)
        return await self._call(ops.generate(request), timeout)

    def generate_stream(self, model: str, prompt: str = "", *, timeout: Timeout = None, priority: int = 0,
                        **sampling: Any) -> AsyncTextStream:
        request = ops.generate_request(model, prompt, priority=priority, **sampling)
        return AsyncTextStream(self._stream("GenerateStream", lambda: request, False, timeout))

    async def score(self, model: str, text: str, *, stride: int | None = None, include_token_logprobs: bool = False,
                    timeout: Timeout = DEFAULT) -> t.ScoreResult:
        return await self._call(ops.score(model, text, stride=stride,
                                          include_token_logprobs=include_token_logprobs), timeout)

    async def attention(self, model: str, text: str, *, layers: Iterable[int] = (), heads: Iterable[int] = (),
                        dtype: str = "float16", timeout: Timeout = DEFAULT) -> t.Attention:
        return await self._call(ops.get_attention(model, text, layers=layers, heads=heads, dtype=dtype), timeout)


class AsyncClient:
    """Both services (asyncio): `client.trainer` and `client.inference`."""

    def __init__(self, trainer_address: str | None = None, inference_address: str | None = None,
                 options: ClientOptions | None = None, inference_options: ClientOptions | None = None) -> None:
        self.trainer = AsyncTrainerClient(trainer_address, options)
        self.inference = AsyncInferenceClient(inference_address, inference_options or options)

    async def close(self) -> None:
        await self.trainer.close()
        await self.inference.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
