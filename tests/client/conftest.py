"""Real in-process servers for client tests, run on an asyncio loop in a background thread so sync clients work."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chargpt_client import ClientOptions, RetryPolicy

VOCAB = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FAST_RETRY = ClientOptions(timeout=30.0, retry=RetryPolicy(max_attempts=8, initial_backoff=0.05, max_backoff=0.5))


class ServerThread:
    """An event loop in a daemon thread hosting any number of ManagedServers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[Any] = []

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self, factory: Callable[[], Coroutine[Any, Any, tuple[Any, int]]]) -> tuple[Any, str]:
        async def go() -> tuple[Any, int]:
            server, port = await factory()
            await server.start()
            return server, port

        server, port = self.run(go())
        self.servers.append(server)
        return server, f"127.0.0.1:{port}"

    def stop(self, server: Any) -> None:
        self.run(server.stop(0))
        self.servers.remove(server)

    def close(self) -> None:
        for server in list(self.servers):
            self.stop(server)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def write_checkpoint(path: Path, seed: int = 0, vocab: str = VOCAB, block_size: int = 32) -> Path:
    """A tiny random model (torch is imported here only: the server side of the tests needs it)."""
    import torch

    from chargpt.core.checkpoint import TrainingInfo, save_checkpoint
    from chargpt.core.config import ModelConfig
    from chargpt.core.model import GPT
    from chargpt.core.tokenizer import CharTokenizer

    torch.manual_seed(seed)
    tokenizer = CharTokenizer(sorted(vocab))
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16,
                         dropout=0.0)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    save_checkpoint(path, model, tokenizer, TrainingInfo(corpus_name="test", step=7, train_loss=1.5))
    return path


@pytest.fixture(scope="module")
def server_thread() -> Iterator[ServerThread]:
    threads = ServerThread()
    yield threads
    threads.close()


def inference_factory(models_dir: Path, **overrides: Any) -> Callable[[], Coroutine[Any, Any, tuple[Any, int]]]:
    from inference_service.server import create_server
    from inference_service.settings import InferenceSettings

    values: dict[str, Any] = {"port": 0, "models_dir": models_dir, "device": "cpu", "torch_threads": 1,
                              "shutdown_grace_seconds": 1.0, **overrides}
    settings = InferenceSettings(**values)
    return lambda: create_server(settings)


def trainer_factory(data_dir: Path, **overrides: Any) -> Callable[[], Coroutine[Any, Any, tuple[Any, int]]]:
    from trainer_service.server import create_server
    from trainer_service.settings import TrainerSettings

    values: dict[str, Any] = {"port": 0, "data_dir": data_dir, "device": "cpu", "shutdown_grace_seconds": 1.0,
                              **overrides}
    settings = TrainerSettings(**values)
    return lambda: create_server(settings)


@dataclass
class InferenceFixture:
    address: str
    models_dir: Path


@pytest.fixture(scope="module")
def inference(server_thread: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> InferenceFixture:
    """An inference server whose models root holds the tiny checkpoints "tiny" and "other"."""
    models = tmp_path_factory.mktemp("models")
    write_checkpoint(models / "tiny")
    write_checkpoint(models / "other", seed=1)
    _, address = server_thread.start(inference_factory(models))
    return InferenceFixture(address, models)
