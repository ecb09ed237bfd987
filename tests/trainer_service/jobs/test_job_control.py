"""Job control over gRPC: queueing per device, cancel, resume, crashes and killed workers, server restarts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from trainer_harness import Trainer, sample_text

from chargpt.v1 import common_pb2
from chargpt.v1 import trainer_pb2 as S
from tests.support.procs import processes_mentioning

RUNNING, QUEUED = S.JOB_STATE_RUNNING, S.JOB_STATE_QUEUED


async def states_of(trainer: Trainer, job_id: str) -> list[tuple[int, str]]:
    out = []
    async for e in trainer.stub.WatchTrainingJob(S.WatchTrainingJobRequest(job_id=job_id), timeout=60):
        if e.HasField("state_changed"):
            out.append((e.state_changed.state, e.state_changed.message))
    return out


async def checkpoint_steps(trainer: Trainer, job_id: str) -> dict[int, int]:
    listed = await trainer.stub.ListCheckpoints(S.ListCheckpointsRequest(job_id=job_id))
    return {c.kind: c.step for c in listed.checkpoints}


async def test_one_job_per_device_then_cancel_and_resume(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    first = await trainer.create_job(corpus.corpus_id, max_steps=40)
    second = await trainer.create_job(corpus.corpus_id, max_steps=5)
    await trainer.wait_for(first.job_id, [RUNNING], min_step=6)
    assert (await trainer.job(second.job_id)).state == QUEUED  # the cpu slot is taken

    started = time.monotonic()
    cancelled = (await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=first.job_id))).job
    assert cancelled.state == S.JOB_STATE_CANCELLED and time.monotonic() - started < 10
    again = (await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=first.job_id))).job
    assert again == cancelled  # idempotent
    kept = await checkpoint_steps(trainer, first.job_id)
    assert kept[common_pb2.CHECKPOINT_KIND_LATEST] == cancelled.step >= 6  # written on the way out

    await trainer.wait_for(second.job_id, [S.JOB_STATE_SUCCEEDED])  # the queue moved on
    resumed = (await trainer.stub.ResumeTrainingJob(S.ResumeTrainingJobRequest(job_id=first.job_id))).job
    assert resumed.state in (QUEUED, RUNNING) and resumed.error == ""
    done = await trainer.wait_for(first.job_id, [S.JOB_STATE_SUCCEEDED])
    assert done.step == 40
    states = await states_of(trainer, first.job_id)
    assert [s for s, _ in states] == [QUEUED, RUNNING, S.JOB_STATE_CANCELLED, QUEUED, RUNNING,
                                      S.JOB_STATE_SUCCEEDED]
    assert f"resumed from step {cancelled.step}" in states[3][1]
    with pytest.raises(grpc.aio.AioRpcError) as info:  # succeeded jobs do not resume
        await trainer.stub.ResumeTrainingJob(S.ResumeTrainingJobRequest(job_id=first.job_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_cancel_a_queued_job(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    blocker = await trainer.create_job(corpus.corpus_id, max_steps=10_000)
    queued = await trainer.create_job(corpus.corpus_id, max_steps=5)
    job = (await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=queued.job_id))).job
    assert job.state == S.JOB_STATE_CANCELLED and job.step == 0
    await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=blocker.job_id))


async def test_engine_error_fails_the_job_with_its_traceback(trainer: Trainer,
                                                             fake_engine_env: pytest.MonkeyPatch) -> None:
    fake_engine_env.setenv("FAKE_ENGINE_FAIL_AT", "8")
    corpus = (await trainer.upload(sample_text(2000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=20)
    failed = await trainer.wait_for(job.job_id, [S.JOB_STATE_FAILED])
    assert "exited with code 1" in failed.error and "fake engine failure at step 8" in failed.error
    # the reason first, one line; the traceback itself stays in worker.log (issue 23.7)
    assert failed.error == "RuntimeError: fake engine failure at step 8 (worker exited with code 1; traceback in " \
                           "worker.log)"
    assert (await checkpoint_steps(trainer, job.job_id))[common_pb2.CHECKPOINT_KIND_LATEST] == 5  # kept
    fake_engine_env.delenv("FAKE_ENGINE_FAIL_AT")
    await trainer.stub.ResumeTrainingJob(S.ResumeTrainingJobRequest(job_id=job.job_id))
    assert (await trainer.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED])).step == 20


async def test_sigkilled_worker_fails_the_job_and_the_server_carries_on(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=10_000)
    await trainer.wait_for(job.job_id, [RUNNING], min_step=6)
    assert trainer.server is not None
    workers = processes_mentioning(job.job_id)  # the job's worker process: its --job-dir names the job
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    failed = await trainer.wait_for(job.job_id, [S.JOB_STATE_FAILED], timeout=20)
    assert "killed by signal SIGKILL" in failed.error
    assert (await checkpoint_steps(trainer, job.job_id))[common_pb2.CHECKPOINT_KIND_LATEST] >= 5
    nxt = await trainer.create_job(corpus.corpus_id, max_steps=3)
    assert (await trainer.wait_for(nxt.job_id, [S.JOB_STATE_SUCCEEDED])).step == 3


async def test_server_restart_requeues_and_finishes_with_the_right_step_count(trainer: Trainer) -> None:
    corpus = (await trainer.upload(sample_text(2000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=30)
    await trainer.wait_for(job.job_id, [RUNNING], min_step=7)
    await trainer.stop()  # graceful: the worker checkpoints and the job goes back to the queue
    assert trainer.store_state(job.job_id) == "queued"
    await trainer.start()
    done = await trainer.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED])
    assert done.step == 30
    states = [s for s, _ in await states_of(trainer, job.job_id)]
    assert states == [QUEUED, RUNNING, QUEUED, RUNNING, S.JOB_STATE_SUCCEEDED]
    progress_steps = []
    async for e in trainer.stub.WatchTrainingJob(S.WatchTrainingJobRequest(job_id=job.job_id)):
        if e.HasField("progress"):
            progress_steps.append(e.progress.step)
    # each step trained once: resumed from the checkpoint written at shutdown
    assert progress_steps == list(range(1, 31))


@pytest.mark.slow
async def test_two_process_ddp_job_under_torchrun_cancels_and_resumes(trainer: Trainer) -> None:
    """The fake engine all-reduces over gloo every step, so this fails unless both ranks run and talk."""
    corpus = (await trainer.upload(sample_text(2000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=40, num_processes=2)
    assert job.resources.num_processes == 2
    await trainer.wait_for(job.job_id, [RUNNING], min_step=5, timeout=90)
    started = time.monotonic()
    cancelled = (await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=job.job_id))).job
    assert cancelled.state == S.JOB_STATE_CANCELLED and time.monotonic() - started < 15  # torchrun forwards
    assert (await checkpoint_steps(trainer, job.job_id))[common_pb2.CHECKPOINT_KIND_LATEST] == cancelled.step
    await trainer.stub.ResumeTrainingJob(S.ResumeTrainingJobRequest(job_id=job.job_id))
    done = await trainer.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED], timeout=90)
    assert done.step == 40
    log = (trainer.data_dir / "jobs" / job.job_id / "worker.log").read_text()
    assert log.count("worker: finished at step 40") == 2  # one line per rank


async def test_more_jobs_per_device_when_configured(tmp_path: Path, fake_engine_env: pytest.MonkeyPatch) -> None:
    trainer = Trainer(tmp_path / "data", max_jobs_per_device=2)
    await trainer.start()
    try:
        corpus = (await trainer.upload(sample_text(2000))).corpus
        jobs = [await trainer.create_job(corpus.corpus_id, max_steps=10_000) for _ in range(3)]
        for job in jobs[:2]:
            await trainer.wait_for(job.job_id, [RUNNING], min_step=1)
        assert (await trainer.job(jobs[2].job_id)).state == QUEUED
        for job in jobs:
            await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=job.job_id))
    finally:
        await trainer.stop()
