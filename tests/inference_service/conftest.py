"""Fixtures for the inference service: tiny checkpoints in a models root and a real server on port 0."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from chargpt.core.checkpoint import TrainingInfo, save_checkpoint
from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT
from chargpt.core.tokenizer import CharTokenizer
from chargpt.v1 import inference_pb2, inference_pb2_grpc
from inference_service.engine.model_metrics import ModelMetrics
from inference_service.engine.output_processor import OutputProcessor
from inference_service.engine.request import GenRequest
from inference_service.engine.scheduler import Scheduler
from inference_service.metrics import InferenceMetrics
from inference_service.server import create_server
from inference_service.settings import InferenceSettings

VOCAB = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def write_checkpoint(path: Path, seed: int = 0, block_size: int = 32, n_embd: int = 32, n_layer: int = 2,
                     n_head: int = 4, vocab: str = VOCAB) -> Path:
    """A tiny random model; a wide init (std 0.5) makes greedy text varied instead of one repeated character."""
    torch.manual_seed(seed)
    tokenizer = CharTokenizer(sorted(vocab))
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd, dropout=0.0)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    save_checkpoint(path, model, tokenizer, TrainingInfo(corpus_name="test", step=7, train_loss=1.5))
    return path


def drive_steps(runner: Any, block_size: int, vocabulary: str, arrivals: list[list[GenRequest]], rows: int = 4
                ) -> list[int]:
    """Drive scheduler -> runner -> output processor as Engine.step does (the runner keeps the rows), adding
    arrivals[i] before step i, until no request is left; the number of rows in each step's logits."""
    s = Scheduler(runner, block_size, rows, 8, ModelMetrics(InferenceMetrics(), "t"))
    processor = OutputProcessor(vocabulary, ModelMetrics(InferenceMetrics(), "t"))
    widths: list[int] = []
    while len(widths) < len(arrivals) or s.has_work():
        s.add(tuple(arrivals[len(widths)]) if len(widths) < len(arrivals) else ())
        scheduled = s.schedule(s.take_waiting(), time.monotonic())
        output = runner.execute(scheduled)
        widths.append(output.logits.shape[0])
        s.free(processor.process(scheduled, output))
    return widths


@dataclass
class Served:
    """A running server, its stub and internals."""

    server: Any
    port: int
    stub: inference_pb2_grpc.InferenceServiceStub
    channel: grpc.aio.Channel
    models_dir: Path

    async def load(self, name: str, path: str, **kwargs: Any) -> inference_pb2.LoadModelResponse:
        request = inference_pb2.LoadModelRequest(name=name, checkpoint_path=path, **kwargs)
        reply: inference_pb2.LoadModelResponse = await self.stub.LoadModel(request, timeout=60)
        return reply

    def metric(self, name: str, **labels: str) -> float:
        value = self.server.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)


ServerFactory = Callable[..., Any]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    started: list[Served] = []

    async def factory(**overrides: Any) -> Served:
        models = tmp_path / "models"
        models.mkdir(exist_ok=True)
        settings = InferenceSettings(port=0, models_dir=models, device="cpu", shutdown_grace_seconds=2.0,
                                     # the torch runner: these tests hold its steps, break its weights and compare
                                     # its numbers with Score's (test_ggml_runner.py serves on ggml)
                                     **{"torch_threads": 1, "decode_runner": "torch", **overrides})
        server, port = await create_server(settings)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        served = Served(server, port, inference_pb2_grpc.InferenceServiceStub(channel), channel, models)
        started.append(served)
        return served

    yield factory
    for served in started:
        await served.channel.close()
        await served.server.stop(0)


@pytest.fixture
async def served(make_server: ServerFactory) -> Served:
    """A server with model "tiny" (block 32) loaded."""
    s: Served = await make_server()
    write_checkpoint(s.models_dir / "tiny")
    await s.load("tiny", "tiny")
    return s
