"""Helpers for trainer-service tests: a real in-process server on 127.0.0.1:0 (fake engine) driven over gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc

from chargpt.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from trainer_service.server import TrainerServer, create_server
from trainer_service.settings import TrainerSettings

HERE = Path(__file__).resolve().parent
FAKE_ENGINE = "fake_engine:run_training"
TERMINAL = {trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED}


def sample_text(chars: int = 6000) -> str:
    """Varied text with multi-byte characters (2, 3 and 4 bytes in UTF-8)."""
    words = ["the", "quick", "brown", "fox", "café", "naïve", "日本語", "🙂", "jumps", "over", "lazy", "dog"]
    out, i = [], 0
    while sum(len(w) + 1 for w in out) < chars:
        out.append(words[(i * 7 + i // 3) % len(words)])
        i += 1
    return " ".join(out)[:chars]


def tiny_model(block_size: int = 16) -> trainer_pb2.ModelSpec:
    return trainer_pb2.ModelSpec(custom=common_pb2.ModelConfig(n_layer=1, n_head=2, n_embd=16,
                                                               block_size=block_size))


def finetune(corpus_id: str, init_from: trainer_pb2.InitFrom, model: trainer_pb2.ModelSpec | None = None,
             **training: object) -> trainer_pb2.CreateTrainingJobRequest:
    """A small fine-tune request on the CPU: 5 steps from `init_from`."""
    return trainer_pb2.CreateTrainingJobRequest(
        corpus_id=corpus_id, init_from=init_from, model=model, resources=trainer_pb2.ResourceSpec(device="cpu"),
        training=trainer_pb2.TrainingSpec(max_steps=5, batch_size=4, **training))  # type: ignore[arg-type]


class Trainer:
    """One server instance (restartable on the same data dir) and a stub connected to it."""

    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        self.data_dir = data_dir
        self.overrides = overrides
        self.server: TrainerServer | None = None
        self.channel: grpc.aio.Channel | None = None
        self.port = 0

    def settings(self) -> TrainerSettings:
        values: dict[str, Any] = dict(port=self.port, data_dir=self.data_dir, device="cpu", engine=FAKE_ENGINE,
                                      metrics_port=None, event_poll_seconds=0.1, worker_stop_timeout_seconds=20,
                                      builtin_corpora=False)
        values.update(self.overrides)
        return TrainerSettings(**values)

    async def start(self) -> None:
        server, port = await create_server(self.settings())
        self.server, self.port = server, port
        await server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = trainer_pb2_grpc.TrainerServiceStub(self.channel)

    def attach(self, port: int) -> None:
        """Talk to a server running elsewhere (e.g. a `python -m trainer_service.server` subprocess)."""
        self.port = port
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = trainer_pb2_grpc.TrainerServiceStub(self.channel)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    def store_state(self, job_id: str) -> str:
        """The job's state as stored, read without a server (e.g. between stop and start)."""
        from trainer_service.store import Store

        store = Store(self.data_dir / "trainer.db")
        try:
            return store.get_job(job_id).state
        finally:
            store.close()

    @property
    def metrics_port(self) -> int:
        assert self.server is not None and self.server.metrics_endpoint.port
        return self.server.metrics_endpoint.port

    async def upload(self, text: str | bytes, name: str = "corpus", chunk: int = 1000,
                     description: str = "") -> trainer_pb2.UploadCorpusResponse:
        data = text.encode("utf-8") if isinstance(text, str) else text
        messages = [trainer_pb2.UploadCorpusRequest(header=trainer_pb2.CorpusHeader(name=name,
                                                                                    description=description))]
        messages += [trainer_pb2.UploadCorpusRequest(data=data[i:i + chunk]) for i in range(0, len(data), chunk)]
        return await self.stub.UploadCorpus(_aiter(messages), timeout=30)

    async def create_job(self, corpus_id: str, max_steps: int = 20, block_size: int = 16,
                         num_processes: int = 1, display_name: str = "", num_nodes: int = 1,
                         **training: Any) -> trainer_pb2.TrainingJob:
        spec = trainer_pb2.TrainingSpec(max_steps=max_steps, batch_size=4, eval_interval=5, sample_interval=5,
                                        sample_length=20, checkpoint_interval=5, warmup_steps=0)
        for name, value in training.items():
            setattr(spec, name, value)
        request = trainer_pb2.CreateTrainingJobRequest(
            corpus_id=corpus_id, display_name=display_name, model=tiny_model(block_size), training=spec,
            resources=trainer_pb2.ResourceSpec(device="cpu", num_processes=num_processes, num_nodes=num_nodes))
        return (await self.stub.CreateTrainingJob(request, timeout=30)).job

    async def job(self, job_id: str) -> trainer_pb2.TrainingJob:
        return (await self.stub.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job_id), timeout=10)).job

    async def wait_for(self, job_id: str, states: Iterable[int], timeout: float = 60,
                       min_step: int = 0) -> trainer_pb2.TrainingJob:
        wanted = set(states)
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job.state in wanted and job.step >= min_step:
                return job
            if time.monotonic() > deadline or (job.state in TERMINAL and job.state not in wanted):
                raise AssertionError(f"job {job_id} still {trainer_pb2.JobState.Name(job.state)} at step "
                                     f"{job.step}: {job.error}")
            await asyncio.sleep(0.1)


async def _aiter(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item
