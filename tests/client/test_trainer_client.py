"""TrainerClient and AsyncTrainerClient against a real in-process trainer (real engine, tiny model, few steps)."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chargpt_client import (
    AsyncTrainerClient,
    CheckpointWritten,
    Evaluation,
    FailedPrecondition,
    InferenceClient,
    InvalidArgument,
    ModelConfig,
    NotFound,
    Progress,
    Sample,
    StateChanged,
    TrainerClient,
    TrainingJob,
    TrainingOptions,
)

from tests.client.conftest import FAST_RETRY, ServerThread, inference_factory, trainer_factory

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 60)
TINY = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)


@dataclass
class TrainerFixture:
    address: str
    client: TrainerClient
    job: TrainingJob  # a finished tiny job
    corpus_id: str


@pytest.fixture(scope="module")
def trainer(server_thread: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerFixture]:
    _, address = server_thread.start(trainer_factory(tmp_path_factory.mktemp("trainer"), builtin_corpora=False,
                                                     event_poll_seconds=0.05))
    with TrainerClient(address, FAST_RETRY) as client:
        corpus = client.upload_corpus("citizens", CORPUS).corpus
        job = client.create_job(corpus.corpus_id, model=TINY, display_name="tiny", training=TrainingOptions(
            max_steps=6, batch_size=4, eval_interval=3, sample_interval=3, sample_length=20, checkpoint_interval=3,
            seed=1))
        yield TrainerFixture(address, client, job, corpus.corpus_id)


def test_device_info(trainer: TrainerFixture) -> None:
    report = trainer.client.device_info()
    assert report.device.type == "cpu" and report.device.cpu_cores >= 1 and "cpu" in report.presets
    assert report.auto_model.n_layer >= 1 and report.auto_batch_size >= 1


def test_uploads_from_every_kind_of_source_are_content_addressed(trainer: TrainerFixture, tmp_path: Path) -> None:
    text = "hello chargpt\n" * 100
    path = tmp_path / "hello.txt"
    path.write_text(text)
    first = trainer.client.upload_corpus("hello", path, description="greetings", chunk_bytes=100)
    assert first.created and first.corpus.num_chars == len(text)
    assert first.corpus.vocabulary == "".join(sorted(set(text)))
    assert first.corpus.train_chars + first.corpus.val_chars == len(text) and not first.corpus.builtin
    for source in (text, text.encode(), io.BytesIO(text.encode()), io.StringIO(text)):
        again = trainer.client.upload_corpus("hello", source)
        assert not again.created and again.corpus.corpus_id == first.corpus.corpus_id
    assert first.corpus.corpus_id in [c.corpus_id for c in trainer.client.list_corpora()]
    assert trainer.client.get_corpus(first.corpus.corpus_id).description == "greetings"
    trainer.client.delete_corpus(first.corpus.corpus_id)
    with pytest.raises(NotFound):
        trainer.client.get_corpus(first.corpus.corpus_id)
    with pytest.raises(InvalidArgument):
        trainer.client.upload_corpus("bad/name", "text")


def test_watch_replays_typed_events_until_the_job_ends(trainer: TrainerFixture) -> None:
    events = list(trainer.client.watch_job(trainer.job.job_id))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert states[0] == "QUEUED" and "RUNNING" in states and states[-1] == "SUCCEEDED"
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress and progress[-1].step == 6 and progress[-1].max_steps == 6 and progress[-1].loss > 0
    assert [e.step for e in events if isinstance(e, Evaluation)] == [3, 6]
    assert all(len(e.text) > 0 for e in events if isinstance(e, Sample))
    assert {e.checkpoint.kind for e in events if isinstance(e, CheckpointWritten)} == {"best", "latest"}
    resumed = list(trainer.client.watch_job(trainer.job.job_id, after_sequence=len(events) - 2))
    assert [e.sequence for e in resumed] == [len(events) - 1, len(events)]


def test_jobs_get_list_cancel_resume(trainer: TrainerFixture) -> None:
    list(trainer.client.watch_job(trainer.job.job_id))
    job = trainer.client.get_job(trainer.job.job_id)
    assert job.state == "SUCCEEDED" and job.finished and job.step == 6 and job.max_steps == 6
    assert job.model.n_embd == 16 and job.model.vocab_size > 10 and job.parameter_count > 0
    assert job.training["batch_size"] == 4 and job.display_name == "tiny" and not math.isnan(job.best_val_loss)
    assert job.finished_time is not None and job.finished_time >= job.created_time  # type: ignore[operator]
    assert trainer.job.job_id in [j.job_id for j in trainer.client.list_jobs()]
    assert trainer.client.list_jobs(["failed"]) == []
    assert trainer.client.cancel_job(job.job_id).state == "SUCCEEDED"  # idempotent on a finished job
    with pytest.raises(FailedPrecondition):
        trainer.client.resume_job(job.job_id)
    with pytest.raises(NotFound):
        trainer.client.get_job("no-such-job")
    with pytest.raises(ValueError, match="job state"):
        trainer.client.list_jobs(["sleeping"])


def test_checkpoints_download_verified(trainer: TrainerFixture, tmp_path: Path) -> None:
    list(trainer.client.watch_job(trainer.job.job_id))
    checkpoints = {c.kind: c for c in trainer.client.list_checkpoints(trainer.job.job_id)}
    assert set(checkpoints) == {"best", "latest"} and checkpoints["latest"].step == 6
    result = trainer.client.download_checkpoint(trainer.job.job_id, tmp_path / "best", kind="best",
                                                chunk_size=1024)
    assert result.checkpoint.weights_sha256 == checkpoints["best"].weights_sha256
    assert {"manifest.json", "model.safetensors"} <= set(result.files)
    assert sum(p.stat().st_size for p in (tmp_path / "best").iterdir()) == checkpoints["best"].size_bytes


def test_inference_loads_from_the_trainer_and_from_a_download(trainer: TrainerFixture, tmp_path: Path,
                                                              server_thread: ServerThread) -> None:
    list(trainer.client.watch_job(trainer.job.job_id))
    trainer.client.download_checkpoint(trainer.job.job_id, tmp_path / "models" / "downloaded")
    _, address = server_thread.start(inference_factory(tmp_path / "models", trainer_address=trainer.address))
    with InferenceClient(address, FAST_RETRY) as inference:
        via_trainer = inference.load_model("from-job", job_id=trainer.job.job_id, kind="best").model
        via_path = inference.load_model("from-dir", checkpoint_path="downloaded").model
        assert via_trainer.weights_sha256 == via_path.weights_sha256
        assert via_trainer.training.job_id == trainer.job.job_id and via_trainer.source.startswith("trainer:")
        assert len(inference.generate("from-job", "First", max_new_tokens=10, seed=1).text) == 10


async def test_async_trainer_client(trainer: TrainerFixture, tmp_path: Path) -> None:
    async with AsyncTrainerClient(trainer.address, FAST_RETRY) as client:
        assert (await client.device_info()).device.type == "cpu"
        uploaded = await client.upload_corpus("async", "async text " * 100)
        assert (await client.get_corpus(uploaded.corpus.corpus_id)).name == "async"
        with pytest.raises(InvalidArgument, match=r"training\.sample_length"):  # an explicit 0 is not "default"
            await client.create_job(uploaded.corpus.corpus_id, model=TINY, training=TrainingOptions(sample_length=0))
        assert trainer.job.job_id in [j.job_id for j in await client.list_jobs(limit=10)]
        events = [e async for e in client.watch_job(trainer.job.job_id)]
        assert isinstance(events[-1], StateChanged) and events[-1].state == "SUCCEEDED"
        assert len(await client.list_checkpoints(trainer.job.job_id)) == 2
        downloaded = await client.download_checkpoint(trainer.job.job_id, tmp_path / "ckpt", kind="latest")
        assert downloaded.checkpoint.step == 6
        await client.delete_corpus(uploaded.corpus.corpus_id)
        with pytest.raises(NotFound):
            await client.get_job("missing")
