"""The whole life cycle over gRPC: upload, train, watch (replay + live, two watchers), checkpoints, download."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
from trainer_harness import Trainer, sample_text

from chargpt.core.checkpoint import load_checkpoint
from chargpt.v1 import common_pb2, trainer_pb2

S = trainer_pb2


async def collect(trainer: Trainer, job_id: str, after: int = 0) -> list[trainer_pb2.WatchTrainingJobResponse]:
    request = S.WatchTrainingJobRequest(job_id=job_id, after_sequence=after)
    return [event async for event in trainer.stub.WatchTrainingJob(request, timeout=60)]


async def test_upload_train_watch_download(trainer: Trainer, tmp_path: Path) -> None:
    text = sample_text(6000)
    data = text.encode()
    # 999-byte chunks split the 2-, 3- and 4-byte characters across chunk boundaries
    uploaded = await trainer.upload(data, name="sample text", chunk=999, description="words")
    corpus = uploaded.corpus
    assert uploaded.created and corpus.corpus_id == hashlib.sha256(data).hexdigest()
    assert (corpus.num_chars, corpus.size_bytes) == (len(text), len(data))
    assert corpus.vocabulary == "".join(sorted(set(text)))
    assert (corpus.train_chars, corpus.val_chars) == (int(len(text) * 0.9), len(text) - int(len(text) * 0.9))
    again = await trainer.upload(data, name="other name", chunk=4096)
    assert not again.created and again.corpus.corpus_id == corpus.corpus_id and again.corpus.name == "sample text"

    job = await trainer.create_job(corpus.corpus_id, max_steps=20)
    assert job.state == S.JOB_STATE_QUEUED and job.model.vocab_size == len(corpus.vocabulary)
    assert job.training.max_steps == 20 and job.training.learning_rate > 0 and job.device == "cpu"
    early = asyncio.create_task(collect(trainer, job.job_id))  # live from the start
    await trainer.wait_for(job.job_id, [S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED], min_step=3)
    late = asyncio.create_task(collect(trainer, job.job_id))  # joins mid-run: history replayed first
    first, second = await asyncio.gather(early, late)
    assert [e.sequence for e in first] == list(range(1, len(first) + 1))
    assert [e.SerializeToString() for e in first] == [e.SerializeToString() for e in second]
    kinds = {e.WhichOneof("event") for e in first}
    assert kinds == {"state_changed", "progress", "evaluation", "sample", "checkpoint_written"}
    states = [e.state_changed.state for e in first if e.HasField("state_changed")]
    assert states == [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED]
    progress = [e.progress for e in first if e.HasField("progress")]
    assert [p.step for p in progress] == list(range(1, 21)) and progress[-1].max_steps == 20
    assert progress[-1].tokens_per_second > 0 and progress[-1].eta_seconds >= 0
    tail = await collect(trainer, job.job_id, after=len(first) - 2)
    assert [e.sequence for e in tail] == [len(first) - 1, len(first)]

    done = await trainer.job(job.job_id)
    assert done.state == S.JOB_STATE_SUCCEEDED and done.step == 20 and done.error == ""
    assert done.best_val_loss <= done.val_loss and done.finished_time.seconds > 0
    listed = (await trainer.stub.ListCheckpoints(S.ListCheckpointsRequest(job_id=job.job_id))).checkpoints
    assert {c.kind for c in listed} == {common_pb2.CHECKPOINT_KIND_LATEST, common_pb2.CHECKPOINT_KIND_BEST}
    latest = next(c for c in listed if c.kind == common_pb2.CHECKPOINT_KIND_LATEST)
    assert latest.step == 20 and len(latest.weights_sha256) == 64 and latest.size_bytes > 0

    out = await download(trainer, job.job_id, common_pb2.CHECKPOINT_KIND_LATEST, tmp_path / "ckpt", 1024)
    assert out.checkpoint.step == 20 and out.checkpoint.weights_sha256 == latest.weights_sha256
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.manifest.training.step == 20 and loaded.tokenizer.vocabulary == corpus.vocabulary
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["manifest.json", "model.safetensors"]
    best = await download(trainer, job.job_id, common_pb2.CHECKPOINT_KIND_UNSPECIFIED, tmp_path / "b", 0)
    assert best.checkpoint.kind == common_pb2.CHECKPOINT_KIND_BEST


async def download(trainer: Trainer, job_id: str, kind: int, target: Path,
                   chunk_size: int) -> trainer_pb2.CheckpointArchiveHeader:
    """Stream a checkpoint into `target`, checking every chunk's and every file's sha256."""
    request = S.DownloadCheckpointRequest(job_id=job_id, kind=kind, chunk_size=chunk_size)
    stream = trainer.stub.DownloadCheckpoint(request, timeout=30)
    header = (await anext(aiter(stream))).header
    target.mkdir()
    chunks = 0
    async for message in stream:
        chunk = message.chunk
        assert hashlib.sha256(chunk.data).hexdigest() == chunk.sha256
        assert len(chunk.data) <= (chunk_size or 1 << 20)
        with open(target / chunk.file_name, "ab") as f:
            assert f.tell() == chunk.offset
            f.write(chunk.data)
        chunks += 1
    assert chunks >= len(header.files) + (chunk_size == 1024)  # small chunks split the weights
    for f in header.files:
        data = (target / f.name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f.size_bytes, f.sha256)
    return header


async def test_download_errors(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=1000)
    for chunk_size, code in [(100, grpc.StatusCode.INVALID_ARGUMENT), (5 << 20, grpc.StatusCode.INVALID_ARGUMENT)]:
        stream = trainer.stub.DownloadCheckpoint(S.DownloadCheckpointRequest(job_id=job.job_id,
                                                                             chunk_size=chunk_size))
        err = await _error(stream)
        assert err.code() == code and "chunk_size" in err.details()
    cancelled = (await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=job.job_id))).job
    if cancelled.step == 0 and not (await trainer.stub.ListCheckpoints(
            S.ListCheckpointsRequest(job_id=job.job_id))).checkpoints:
        err = await _error(trainer.stub.DownloadCheckpoint(S.DownloadCheckpointRequest(job_id=job.job_id)))
        assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await _error(trainer.stub.DownloadCheckpoint(S.DownloadCheckpointRequest(job_id="nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def _error(stream: object) -> grpc.aio.AioRpcError:
    try:
        async for _ in stream:  # type: ignore[attr-defined]
            pass
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("expected an error")


async def test_a_stalled_watcher_does_not_hold_training_back(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=40, sample_length=2000)
    stream = trainer.stub.WatchTrainingJob(S.WatchTrainingJobRequest(job_id=job.job_id), timeout=60)
    first = await anext(aiter(stream))
    assert first.sequence == 1
    # Nobody reads the stream while the job trains; it must still finish at its normal pace.
    done = await trainer.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED], timeout=30)
    rest = [e async for e in stream]
    assert [e.sequence for e in rest] == list(range(2, len(rest) + 2))
    assert rest[-1].state_changed.state == S.JOB_STATE_SUCCEEDED and done.step == 40
