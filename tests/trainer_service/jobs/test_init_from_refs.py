"""init_from through the server: every bad reference gets its status naming the field; a good one records lineage."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from trainer_harness import Trainer, finetune, sample_text

from chargpt.v1 import common_pb2
from chargpt.v1 import trainer_pb2 as S


async def _status(trainer: Trainer, request: S.CreateTrainingJobRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer.stub.CreateTrainingJob(request)
    return info.value.code(), info.value.details() or ""


async def test_bad_references_name_their_field(trainer: Trainer, tmp_path: Path) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    parent = await trainer.create_job(corpus.corpus_id, max_steps=10)
    parent = await trainer.wait_for(parent.job_id, [S.JOB_STATE_SUCCEEDED])
    fresh = await trainer.create_job(corpus.corpus_id, max_steps=100_000)
    await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=fresh.job_id))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cases = [
        (S.InitFrom(job_id="f" * 32), grpc.StatusCode.NOT_FOUND, "init_from.job_id"),
        (S.InitFrom(job_id="../etc"), grpc.StatusCode.INVALID_ARGUMENT, "init_from.job_id"),
        (S.InitFrom(path=str(outside)), grpc.StatusCode.PERMISSION_DENIED, "init_from.path"),
        (S.InitFrom(path="jobs/../../elsewhere"), grpc.StatusCode.INVALID_ARGUMENT, "init_from.path"),
        (S.InitFrom(path="jobs/nothing-here"), grpc.StatusCode.NOT_FOUND, "init_from.path"),
        (S.InitFrom(path="jobs/x", kind=common_pb2.CHECKPOINT_KIND_BEST), grpc.StatusCode.INVALID_ARGUMENT,
         "init_from.kind"),
        (S.InitFrom(), grpc.StatusCode.INVALID_ARGUMENT, "init_from"),
    ]
    for init_from, code, field in cases:
        status, details = await _status(trainer, finetune(corpus.corpus_id, init_from))
        assert status == code and details.startswith(field + ":"), (init_from, status, details)
    await trainer.wait_for(fresh.job_id, [S.JOB_STATE_CANCELLED])
    shutil.rmtree(trainer.data_dir / "jobs" / fresh.job_id / "checkpoints" / "best", ignore_errors=True)  # none yet
    status, details = await _status(trainer, finetune(corpus.corpus_id, S.InitFrom(job_id=fresh.job_id)))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("init_from.job_id:"), details
    conflicting = S.ModelSpec(custom=common_pb2.ModelConfig(n_layer=3, n_head=2, n_embd=16, block_size=16))
    status, details = await _status(trainer, finetune(corpus.corpus_id, S.InitFrom(job_id=parent.job_id),
                                                      conflicting))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("model.custom.n_layer:"), details
    assert (await trainer.stub.ListTrainingJobs(S.ListTrainingJobsRequest())).jobs[0].job_id == fresh.job_id


async def test_a_finetune_records_its_parent_and_takes_its_architecture(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    parent = await trainer.create_job(corpus.corpus_id, max_steps=10)
    parent = await trainer.wait_for(parent.job_id, [S.JOB_STATE_SUCCEEDED])
    other = (await trainer.upload(sample_text(2000) + "~^", name="other")).corpus
    same_size = S.ModelSpec(custom=common_pb2.ModelConfig(n_layer=parent.model.n_layer, n_head=parent.model.n_head,
                                                          n_embd=parent.model.n_embd, block_size=16, dropout=0.3))
    job = (await trainer.stub.CreateTrainingJob(finetune(
        other.corpus_id, S.InitFrom(job_id=parent.job_id, kind=common_pb2.CHECKPOINT_KIND_LATEST), same_size))).job
    assert job.parent.job_id == parent.job_id and job.parent.kind == common_pb2.CHECKPOINT_KIND_LATEST
    assert job.parent.corpus_id == corpus.corpus_id and len(job.parent.weights_sha256) == 64
    assert job.model.vocab_size == len(set(corpus.vocabulary) | set(other.vocabulary))
    assert job.model.dropout == pytest.approx(0.3) and job.model.n_embd == parent.model.n_embd
    by_path = (await trainer.stub.CreateTrainingJob(finetune(
        other.corpus_id, S.InitFrom(path=f"jobs/{parent.job_id}/checkpoints/best")))).job
    assert by_path.parent.kind == common_pb2.CHECKPOINT_KIND_UNSPECIFIED and by_path.parent.job_id == parent.job_id
    done = await trainer.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED])
    assert done.parent == job.parent
