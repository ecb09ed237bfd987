"""Bad job specs and list/page requests: the exact status code, with the offending field named."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from tests_support import cuda_missing  # type: ignore[import-not-found]
from trainer_harness import Trainer, sample_text, tiny_model

from chargpt.v1 import common_pb2
from chargpt.v1 import trainer_pb2 as S

INVALID, NOT_FOUND, PRECONDITION = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                    grpc.StatusCode.FAILED_PRECONDITION)


def request(corpus_id: str, model: S.ModelSpec | None = None, resources: dict[str, Any] | None = None,
            **training: Any) -> S.CreateTrainingJobRequest:
    spec = S.TrainingSpec(max_steps=5, batch_size=4)
    for name, value in training.items():
        setattr(spec, name, value)
    return S.CreateTrainingJobRequest(corpus_id=corpus_id, model=model or tiny_model(), training=spec,
                                      resources=S.ResourceSpec(**(resources or {"device": "cpu"})))


def custom(**fields: Any) -> S.ModelSpec:
    values = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, **fields}
    return S.ModelSpec(custom=common_pb2.ModelConfig(**values))


CASES: list[tuple[str, dict[str, Any], grpc.StatusCode, str]] = [
    ("preset", {"model": S.ModelSpec(preset="huge")}, INVALID, "model.preset"),
    ("heads", {"model": custom(n_head=3)}, INVALID, "model.custom.n_head"),
    ("layers", {"model": custom(n_layer=0)}, INVALID, "model.custom.n_layer"),
    ("width", {"model": custom(n_embd=-4)}, INVALID, "model.custom.n_embd"),
    ("dropout", {"model": custom(dropout=1.0)}, INVALID, "model.custom.dropout"),
    ("dropout-nan", {"model": custom(dropout=math.nan)}, INVALID, "model.custom.dropout"),
    ("block-vs-corpus", {"model": custom(block_size=500)}, INVALID, "model.custom.block_size"),
    ("preset-block-vs-corpus", {"model": S.ModelSpec(preset="small")}, INVALID, "model"),
    ("lr-zero", {"learning_rate": 0.0}, INVALID, "training.learning_rate"),
    ("lr-negative", {"learning_rate": -1e-3}, INVALID, "training.learning_rate"),
    ("lr-nan", {"learning_rate": math.nan}, INVALID, "training.learning_rate"),
    ("lr-inf", {"learning_rate": math.inf}, INVALID, "training.learning_rate"),
    ("min-lr-above-lr", {"learning_rate": 1e-3, "min_learning_rate": 1e-2}, INVALID, "training.min_learning_rate"),
    ("steps", {"max_steps": 0}, INVALID, "training.max_steps"),
    ("batch", {"batch_size": 0}, INVALID, "training.batch_size"),
    ("warmup", {"warmup_steps": -1}, INVALID, "training.warmup_steps"),
    ("decay", {"weight_decay": -0.1}, INVALID, "training.weight_decay"),
    ("clip-nan", {"grad_clip": math.nan}, INVALID, "training.grad_clip"),
    ("eval", {"eval_interval": -5}, INVALID, "training.eval_interval"),
    ("sample-length", {"sample_length": 0}, INVALID, "training.sample_length"),
    ("accumulation", {"grad_accumulation_steps": 0}, INVALID, "training.grad_accumulation_steps"),
    ("fp16-on-cpu", {"precision": S.PRECISION_FP16}, INVALID, "training.precision"),
    ("unknown-enum", {"compile": 42}, INVALID, "training.compile"),
    ("uneven-batch", {"batch_size": 5, "resources": {"device": "cpu", "num_processes": 2}}, INVALID,
     "training.batch_size"),
    ("device", {"resources": {"device": "gpu"}}, INVALID, "resources.device"),
    ("processes-negative", {"resources": {"device": "cpu", "num_processes": -1}}, INVALID,
     "resources.num_processes"),
    ("processes-zero", {"resources": {"device": "cpu", "num_processes": 0}}, INVALID, "resources.num_processes"),
    ("lr-too-high", {"learning_rate": 11.0}, INVALID, "training.learning_rate"),
    ("warmup-above-steps", {"warmup_steps": 6}, INVALID, "training.warmup_steps"),
    ("seed-negative", {"seed": -1}, INVALID, "training.seed"),
    ("sample-length-huge", {"sample_length": 100_001}, INVALID, "training.sample_length"),
    ("accumulation-huge", {"grad_accumulation_steps": 2048}, INVALID, "training.grad_accumulation_steps"),
    ("steps-huge", {"max_steps": 10_000_001}, INVALID, "training.max_steps"),
    ("processes-huge", {"resources": {"device": "cpu", "num_processes": 1000}}, INVALID,
     "resources.num_processes"),
    ("nodes-negative", {"resources": {"device": "cpu", "num_nodes": -1}}, INVALID, "resources.num_nodes"),
    ("nodes-on-local", {"resources": {"device": "cpu", "num_nodes": 2}}, PRECONDITION, "resources.num_nodes"),
]


@pytest.mark.parametrize(("fields", "code", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_job_specs(trainer: Trainer, fields: dict[str, Any], code: grpc.StatusCode, field: str) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus  # validation split: 200 characters
    fields = dict(fields)
    req = request(corpus.corpus_id, fields.pop("model", None), fields.pop("resources", None), **fields)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer.stub.CreateTrainingJob(req)
    assert info.value.code() == code
    assert info.value.details().startswith(field + ":") or f"{field}:" in info.value.details(), \
        info.value.details()
    assert (await trainer.stub.ListTrainingJobs(S.ListTrainingJobsRequest())).jobs == []


async def test_missing_and_unknown_corpus(trainer: Trainer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer.stub.CreateTrainingJob(request(""))
    assert info.value.code() == INVALID and "corpus_id" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer.stub.CreateTrainingJob(request("0" * 64))
    assert info.value.code() == NOT_FOUND


@pytest.mark.skipif(not cuda_missing(), reason="this machine has CUDA")
async def test_unavailable_device_is_a_failed_precondition(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer.stub.CreateTrainingJob(request(corpus.corpus_id, resources={"device": "cuda"}))
    assert info.value.code() == PRECONDITION and "resources.device" in info.value.details()


async def test_defaults_are_resolved(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    job = (await trainer.stub.CreateTrainingJob(S.CreateTrainingJobRequest(
        corpus_id=corpus.corpus_id, model=custom(dropout=0.1),
        resources=S.ResourceSpec(device="cpu")))).job
    t = job.training
    assert t.max_steps > 0 and t.batch_size > 0 and t.learning_rate > 0 and t.HasField("seed")
    assert t.min_learning_rate == 0.0  # the CPU size profile decays to zero
    assert t.lr_schedule == S.LR_SCHEDULE_COSINE and t.precision == S.PRECISION_AUTO
    assert t.optimizer == S.OPTIMIZER_MUON  # the CPU size profile's optimizer
    assert job.model.dropout == pytest.approx(0.1) and job.resources.num_processes == 1
    assert job.parameter_count > 0 and math.isnan(job.train_loss) and math.isnan(job.best_val_loss)
    await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=job.job_id))


async def test_a_requested_optimizer_replaces_the_profiles(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    job = (await trainer.stub.CreateTrainingJob(request(corpus.corpus_id, optimizer=S.OPTIMIZER_ADAMW))).job
    assert job.training.optimizer == S.OPTIMIZER_ADAMW
    await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=job.job_id))


async def test_explicit_zeros_mean_what_the_proto_says(trainer: Trainer) -> None:
    """Where 0 has a meaning (off, none, decay to zero, a seed) an explicit 0 is kept, never replaced by a default."""
    corpus = (await trainer.upload(sample_text(2000))).corpus
    zeros = ("min_learning_rate", "warmup_steps", "weight_decay", "grad_clip", "eval_interval", "sample_interval",
             "seed", "checkpoint_interval")
    job = (await trainer.stub.CreateTrainingJob(request(corpus.corpus_id, max_steps=10_000,
                                                        **dict.fromkeys(zeros, 0)))).job
    assert {name: getattr(job.training, name) for name in zeros} == dict.fromkeys(zeros, 0)
    await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=job.job_id))


async def test_list_paging_filters_and_bad_requests(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    ids = []
    for _ in range(5):  # only one runs at a time; cancel each so none trains
        job = await trainer.create_job(corpus.corpus_id, max_steps=10_000)
        await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=job.job_id))
        ids.append(job.job_id)
    seen, token = [], ""
    while True:
        page = await trainer.stub.ListTrainingJobs(S.ListTrainingJobsRequest(page_size=2, page_token=token))
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]  # newest first
    only = await trainer.stub.ListTrainingJobs(S.ListTrainingJobsRequest(states=[S.JOB_STATE_SUCCEEDED]))
    assert only.jobs == []
    cancelled = await trainer.stub.ListTrainingJobs(S.ListTrainingJobsRequest(states=[S.JOB_STATE_CANCELLED]))
    assert len(cancelled.jobs) == 5
    for bad, field in [({"page_size": 1001}, "page_size"), ({"page_size": -1}, "page_size"),
                       ({"page_token": "garbage!"}, "page_token"), ({"page_token": "YWJj"}, "page_token")]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await trainer.stub.ListTrainingJobs(S.ListTrainingJobsRequest(**bad))
        assert info.value.code() == INVALID and field in info.value.details()


async def test_unknown_jobs_and_wrong_states(trainer: Trainer) -> None:
    for call, req in [(trainer.stub.GetTrainingJob, S.GetTrainingJobRequest(job_id="nope")),
                      (trainer.stub.CancelTrainingJob, S.CancelTrainingJobRequest(job_id="nope")),
                      (trainer.stub.ResumeTrainingJob, S.ResumeTrainingJobRequest(job_id="nope")),
                      (trainer.stub.ListCheckpoints, S.ListCheckpointsRequest(job_id="nope"))]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(req)  # type: ignore[operator]
        assert info.value.code() == NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in trainer.stub.WatchTrainingJob(S.WatchTrainingJobRequest(job_id="nope")):
            pass
    assert info.value.code() == NOT_FOUND
    corpus = (await trainer.upload(sample_text(2000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=10_000)
    with pytest.raises(grpc.aio.AioRpcError) as info:  # queued or running: nothing to resume
        await trainer.stub.ResumeTrainingJob(S.ResumeTrainingJobRequest(job_id=job.job_id))
    assert info.value.code() == PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in trainer.stub.WatchTrainingJob(S.WatchTrainingJobRequest(job_id=job.job_id,
                                                                               after_sequence=-1)):
            pass
    assert info.value.code() == INVALID and "after_sequence" in info.value.details()
    await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=job.job_id))


async def test_local_executor_names_why_it_runs_one_node(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    req = request(corpus.corpus_id, resources={"device": "cpu", "num_nodes": 2})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trainer.stub.CreateTrainingJob(req)
    assert "slurm or kubernetes executor" in info.value.details() and "executor=local" in info.value.details()
    one = (await trainer.stub.CreateTrainingJob(request(corpus.corpus_id, resources={"device": "cpu",
                                                                                      "num_nodes": 1}))).job
    assert one.resources.num_nodes == 1
