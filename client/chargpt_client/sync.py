"""Synchronous clients: TrainerClient, InferenceClient and Client (both). Logic lives in ops/convert/transfer."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from chargpt.v1 import inference_pb2_grpc, trainer_pb2_grpc
from chargpt_client import from_proto, ops
from chargpt_client import types as t
from chargpt_client.calls import DEFAULT, Deadline, GenerationState, Timeout, retry_delay, retry_policy
from chargpt_client.errors import ChargptClientError, from_rpc_error
from chargpt_client.options import ClientOptions, inference_address, sync_channel, trainer_address
from chargpt_client.training import TrainingOptions
from chargpt_client.transfer import UPLOAD_CHUNK_BYTES, CorpusSource, ModelUpload, UploadSource, consume_download

T = TypeVar("T")


class _SyncService:
    """A channel, a stub and the sync call layer (deadlines, retries, metadata, typed errors)."""

    def __init__(self, address: str, options: ClientOptions | None, stub_factory: Callable[[grpc.Channel], Any]):
        self.address = address
        self.options = options or ClientOptions.from_env()
        self._channel = sync_channel(address, self.options)
        self._stub = stub_factory(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, op: ops.Unary[T], timeout: Timeout = DEFAULT) -> T:
        return op.convert(self._invoke(op.method, lambda: op.request, op.idempotent, timeout))

    def _invoke(self, method: str, request: Callable[[], Any], retry_safe: bool, timeout: Timeout) -> Any:
        deadline = Deadline(timeout, self.options)
        delays = retry_policy(self.options, retry_safe).delays()
        while True:
            try:
                return getattr(self._stub, method)(request(), timeout=deadline.remaining(),
                                                   metadata=self.options.metadata())
            except grpc.RpcError as error:
                time.sleep(retry_delay(error, delays, deadline))

    def _stream(self, method: str, request: Callable[[], Message], resumable: bool,
                timeout: Timeout) -> Generator[Any, None, None]:
        """Server-stream messages; retried before the first message, or throughout when `resumable`."""
        deadline = Deadline(timeout, self.options)
        policy = self.options.retry
        delays = policy.delays()
        while True:
            received = False
            call = getattr(self._stub, method)(request(), timeout=deadline.remaining(),
                                               metadata=self.options.metadata())
            try:
                for message in call:
                    received = True
                    yield message
                return
            except grpc.RpcError as error:
                if received and not resumable:
                    raise from_rpc_error(error) from None
                delays = policy.delays() if received else delays  # progress earns a fresh retry budget
                time.sleep(retry_delay(error, delays, deadline))
            finally:
                call.cancel()


class TrainerClient(_SyncService):
    """The trainer service: device facts, corpora, training jobs, progress and checkpoints."""

    def __init__(self, address: str | None = None, options: ClientOptions | None = None) -> None:
        super().__init__(trainer_address(address), options, trainer_pb2_grpc.TrainerServiceStub)

    def device_info(self, *, recalibrate: bool = False, timeout: Timeout = DEFAULT) -> t.DeviceReport:
        """The trainer's device, auto's choices and the figures measured there (recalibrate: measure again)."""
        return self._call(ops.get_device_info(recalibrate), timeout)

    def upload_corpus(self, name: str, source: CorpusSource, *, description: str = "",
                      chunk_bytes: int = UPLOAD_CHUNK_BYTES, timeout: Timeout = DEFAULT) -> t.UploadResult:
        """Upload text (str), bytes, a file (pathlib.Path) or a file object, in chunks."""
        upload = UploadSource(source, chunk_bytes)
        try:
            response = self._invoke("UploadCorpus", lambda: upload.requests(name, description), upload.replayable,
                                    timeout)
        except ChargptClientError:
            if upload.error is not None:  # the source failed, not the server
                raise upload.error from None
            raise
        return from_proto.upload_result(response)

    def list_corpora(self, *, timeout: Timeout = DEFAULT) -> list[t.Corpus]:
        return self._call(ops.list_corpora(), timeout)

    def get_corpus(self, corpus_id: str, *, timeout: Timeout = DEFAULT) -> t.Corpus:
        return self._call(ops.get_corpus(corpus_id), timeout)

    def read_corpus(self, corpus_id: str, split: str = "all", offset: int = 0, length: int = ops.MAX_READ_CHARS,
                    *, timeout: Timeout = DEFAULT) -> t.CorpusText:
        """Characters of a corpus, exactly as stored; `split` is "all", "train" or "validation", and a negative
        `offset` counts from the split's end (offset=-600, length=600: its last 600 characters)."""
        return self._call(ops.read_corpus(corpus_id, split, offset, length), timeout)

    def delete_corpus(self, corpus_id: str, *, timeout: Timeout = DEFAULT) -> None:
        self._call(ops.delete_corpus(corpus_id), timeout)

    def create_job(self, corpus_id: str, *, preset: str | None = None, model: t.ModelConfig | None = None,
                   training: TrainingOptions | None = None, display_name: str = "", device: str = "",
                   num_processes: int | None = None, num_nodes: int | None = None,
                   init_from: str | None = None, priority: int = 0,
                   timeout: Timeout = DEFAULT, **training_keywords: Any) -> t.TrainingJob:
        """Start training; unset options (and `training=None`) take the server's defaults for the model size.

        `init_from` fine-tunes a checkpoint instead of starting from random weights: "JOB", "JOB:best" or
        "JOB:latest" (a trainer job's checkpoint), or a checkpoint directory on the trainer ("a/b": relative to its
        data directory). The architecture comes from it (`model` may change dropout only). `priority` orders the
        job within your tenant's queue: lower starts first (vLLM's convention), default 0.

        Deprecated (0.1's form, removed in 0.3.0): training fields as keywords, `create_job(corpus_id,
        max_steps=500)`; they map onto `training=TrainingOptions(max_steps=500)` with a DeprecationWarning.
        """
        return self._call(ops.create_training_job(corpus_id, preset=preset, model=model, training=training,
                                                  display_name=display_name, device=device,
                                                  num_processes=num_processes, num_nodes=num_nodes,
                                                  init_from=init_from, priority=priority, **training_keywords),
                          timeout)

    def get_job(self, job_id: str, *, timeout: Timeout = DEFAULT) -> t.TrainingJob:
        return self._call(ops.get_training_job(job_id), timeout)

    def list_jobs(self, states: Iterable[str] = (), *, limit: int | None = None,
                  timeout: Timeout = DEFAULT) -> list[t.TrainingJob]:
        """Jobs newest first, following pages until `limit` jobs (or all)."""
        jobs: list[t.TrainingJob] = []
        token = ""
        while True:
            page, token = self._call(ops.list_training_jobs_page(states, min(limit or 1000, 1000), token), timeout)
            jobs.extend(page)
            if not token or (limit is not None and len(jobs) >= limit):
                return jobs[:limit]

    def cancel_job(self, job_id: str, *, timeout: Timeout = DEFAULT) -> t.TrainingJob:
        return self._call(ops.cancel_training_job(job_id), timeout)

    def resume_job(self, job_id: str, *, timeout: Timeout = DEFAULT) -> t.TrainingJob:
        return self._call(ops.resume_training_job(job_id), timeout)

    def watch_job(self, job_id: str, *, after_sequence: int = 0, timeout: Timeout = None) -> Iterator[t.JobEvent]:
        """The job's events (history first, then live) until it ends; reconnects after the last event seen."""
        cursor = [after_sequence]  # read at each (re)connect: resume after the last event delivered
        for message in self._stream("WatchTrainingJob", lambda: ops.watch_request(job_id, cursor[0]), True, timeout):
            event = from_proto.job_event(message)
            cursor[0] = event.sequence
            yield event

    def list_checkpoints(self, job_id: str, *, timeout: Timeout = DEFAULT) -> list[t.Checkpoint]:
        return self._call(ops.list_checkpoints(job_id), timeout)

    def download_checkpoint(self, job_id: str, destination: str | os.PathLike[str], *, kind: str = "",
                            chunk_size: int = 0, overwrite: bool = False,
                            timeout: Timeout = DEFAULT) -> t.DownloadedCheckpoint:
        """Download into `destination` (a new directory), verifying every chunk's and file's sha256."""
        request = ops.download_request(job_id, kind, chunk_size)
        return consume_download(self._stream("DownloadCheckpoint", lambda: request, False, timeout),
                                destination, overwrite)

    def import_model(self, format: str, path: str | os.PathLike[str], *, name: str,
                     meta: str | os.PathLike[str] | None = None, chunk_bytes: int = UPLOAD_CHUNK_BYTES,
                     timeout: Timeout = DEFAULT) -> t.ImportResult:
        """Import a model trained elsewhere: format "nanogpt" (`path`: its ckpt.pt, `meta`: the dataset's meta.pkl)
        or "hf" (`path`: a GPT-2 directory with a character-level tokenizer.json). The trainer converts it into a
        finished job's checkpoint: use `result.job.job_id` as any job's (load, score, export, train --from).
        Not retried (a retry could import twice)."""
        upload = ModelUpload(format, path, meta, chunk_bytes)
        return from_proto.import_result(self._invoke("ImportModel", lambda: upload.requests(name), False, timeout))


class TextStream:
    """Generated text chunks as they arrive; afterwards `.text`, `.summary` and `.result()`. `cancel()` (or leaving
    a `with` block early) stops the generation on the server."""

    def __init__(self, messages: Generator[Any, None, None]) -> None:
        self._messages = messages
        self._state = GenerationState()

    def cancel(self) -> None:
        """Cancel the RPC, so the server frees the generation's batch row; `.text` keeps what arrived, `.summary`
        stays None. Nothing happens once the stream has ended."""
        self._messages.close()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def __iter__(self) -> Iterator[str]:
        for message in self._messages:
            text = self._state.add(message)
            if text:
                yield text

    @property
    def text(self) -> str:
        return self._state.text

    @property
    def summary(self) -> t.GenerationSummary | None:
        return self._state.summary

    def result(self) -> t.GenerationResult:
        for _ in self:
            pass
        return self._state.result()


class InferenceClient(_SyncService):
    """The inference service: model registry, streamed generation, scoring and attention."""

    def __init__(self, address: str | None = None, options: ClientOptions | None = None) -> None:
        super().__init__(inference_address(address), options, inference_pb2_grpc.InferenceServiceStub)

    def load_model(self, name: str, *, checkpoint_path: str | None = None, job_id: str | None = None,
                   kind: str = "", device: str = "", dtype: str = "", timeout: Timeout = DEFAULT) -> t.LoadResult:
        """Load a checkpoint directory (under the service's models root) or a trainer job's checkpoint."""
        return self._call(ops.load_model(name, checkpoint_path=checkpoint_path, job_id=job_id, kind=kind,
                                         device=device, dtype=dtype), timeout)

    def unload_model(self, name: str, *, timeout: Timeout = DEFAULT) -> None:
        self._call(ops.unload_model(name), timeout)

    def list_models(self, *, timeout: Timeout = DEFAULT) -> list[t.Model]:
        return self._call(ops.list_models(), timeout)

    def get_model(self, name: str, *, timeout: Timeout = DEFAULT) -> t.Model:
        return self._call(ops.get_model(name), timeout)

    def generate(self, model: str, prompt: str = "", *, timeout: Timeout = DEFAULT, priority: int = 0,
                 **sampling: Any) -> t.GenerationResult:
        """The whole text at once. sampling: ops.generate_request's keywords (SamplingOptions' fields, e.g.
        temperature=0.8) or options=SamplingOptions(...)."""
        return self._call(ops.generate(ops.generate_request(model, prompt, priority=priority, **sampling)), timeout)

    def generate_stream(self, model: str, prompt: str = "", *, timeout: Timeout = None, priority: int = 0,
                        **sampling: Any) -> TextStream:
        """Text chunks as they are generated (see generate for `sampling`)."""
        request = ops.generate_request(model, prompt, priority=priority, **sampling)
        return TextStream(self._stream("GenerateStream", lambda: request, False, timeout))

    def score(self, model: str, text: str, *, stride: int | None = None, include_token_logprobs: bool = False,
              timeout: Timeout = DEFAULT) -> t.ScoreResult:
        return self._call(ops.score(model, text, stride=stride, include_token_logprobs=include_token_logprobs),
                          timeout)

    def attention(self, model: str, text: str, *, layers: Iterable[int] = (), heads: Iterable[int] = (),
                  dtype: str = "float16", timeout: Timeout = DEFAULT) -> t.Attention:
        return self._call(ops.get_attention(model, text, layers=layers, heads=heads, dtype=dtype), timeout)


class Client:
    """Both services: `client.trainer` and `client.inference`."""

    def __init__(self, trainer_address: str | None = None, inference_address: str | None = None,
                 options: ClientOptions | None = None, inference_options: ClientOptions | None = None) -> None:
        self.trainer = TrainerClient(trainer_address, options)
        self.inference = InferenceClient(inference_address, inference_options or options)

    def close(self) -> None:
        self.trainer.close()
        self.inference.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
