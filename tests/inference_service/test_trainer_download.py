"""Loading a trainer job's checkpoint over DownloadCheckpoint, from a fake trainer served in the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from chargpt.v1 import common_pb2, inference_pb2
from tests.support.fake_trainer import CheckpointTrainer, serve_trainer

from .conftest import Served, write_checkpoint


@pytest.fixture
async def trainer(tmp_path: Path) -> AsyncIterator[tuple[CheckpointTrainer, int]]:
    fake = CheckpointTrainer(write_checkpoint(tmp_path / "trainer-side" / "best", seed=4))
    server, port = await serve_trainer(fake)
    yield fake, port
    await server.stop(0)


def _load(s: Served, name: str, job: str = "job1", kind: int = common_pb2.CHECKPOINT_KIND_BEST) -> Any:
    ref = inference_pb2.TrainerCheckpointRef(job_id=job, kind=kind)  # type: ignore[arg-type]
    return s.stub.LoadModel(inference_pb2.LoadModelRequest(name=name, trainer_checkpoint=ref), timeout=30)


async def test_load_from_trainer_then_cached(make_server: Any, trainer: tuple[CheckpointTrainer, int]) -> None:
    fake, port = trainer
    s: Served = await make_server(trainer_address=f"127.0.0.1:{port}", download_chunk_bytes=1024)
    reply = await _load(s, "fromjob")
    assert reply.loaded and reply.model.state == inference_pb2.MODEL_STATE_READY
    assert reply.model.source == "trainer:job1/best"
    text = await s.stub.Generate(inference_pb2.GenerateRequest(model="fromjob", prompt="a", max_new_tokens=5))
    assert len(text.text) == 5
    cached = [p for p in (s.models_dir / ".trainer-cache").iterdir()]
    assert len(cached) == 1 and cached[0].name.startswith("job1-best-")
    again = await _load(s, "fromjob")
    assert not again.loaded and fake.downloads == 1
    await _load(s, "second")  # same checkpoint under another name: served from the cache's copy
    assert len(list((s.models_dir / ".trainer-cache").iterdir())) == 1
    # no kind: the trainer's default, labelled as `--preload name=trainer:JOB` writes it
    default = await _load(s, "default", kind=common_pb2.CHECKPOINT_KIND_UNSPECIFIED)
    assert default.model.source == "trainer:job1"


async def test_corrupt_chunk_fails_cleanly(make_server: Any, trainer: tuple[CheckpointTrainer, int]) -> None:
    fake, port = trainer
    fake.corrupt = True
    s: Served = await make_server(trainer_address=f"127.0.0.1:{port}", download_chunk_bytes=1024)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _load(s, "fromjob")
    assert err.value.code() == grpc.StatusCode.DATA_LOSS and "sha256" in (err.value.details() or "")
    assert list((s.models_dir / ".trainer-cache").iterdir()) == []  # nothing half-written is left
    fake.corrupt = False
    reply = await _load(s, "fromjob")  # a failed name can be loaded again
    assert reply.model.state == inference_pb2.MODEL_STATE_READY


async def test_unknown_job_and_missing_trainer(make_server: Any, trainer: tuple[CheckpointTrainer, int]) -> None:
    _, port = trainer
    s: Served = await make_server(trainer_address=f"127.0.0.1:{port}")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _load(s, "x", job="nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _load(s, "y", job="../etc")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    plain: Served = await make_server()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _load(plain, "z")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_preload_from_trainer(make_server: Any, trainer: tuple[CheckpointTrainer, int]) -> None:
    _, port = trainer
    s: Served = await make_server(trainer_address=f"127.0.0.1:{port}",
                                  preload="pre=trainer:job1/best,bad=trainer:x/y")
    models = {m.name: m for m in (await s.stub.ListModels(inference_pb2.ListModelsRequest(), timeout=5)).models}
    assert models["pre"].state == inference_pb2.MODEL_STATE_READY and models["pre"].source == "trainer:job1/best"
    assert "bad" not in models  # an unknown kind is refused before anything is loaded
