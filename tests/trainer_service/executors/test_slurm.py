"""The trainer with executor=slurm against a real one-node Slurm cluster (deploy/slurm/cluster.sh)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch
from trainer_harness import Trainer, sample_text

from chargpt.core.checkpoint import load_checkpoint
from chargpt.v1 import common_pb2
from chargpt.v1 import trainer_pb2 as S
from deploy.tools.slurm_cluster import SlurmCluster
from tests.support.slurm import running_cluster
from trainer_service.settings import DEFAULT_ENGINE
from trainer_service.store import Store

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    yield from running_cluster(tmp_path_factory.mktemp("slurm"))


def slurm_trainer(data_dir: Path, **overrides: object) -> Trainer:
    return Trainer(data_dir, executor="slurm", cluster_python=sys.executable, cluster_poll_seconds=0.2,
                   **overrides)


@pytest.fixture
async def trainer(tmp_path: Path, fake_engine_env: pytest.MonkeyPatch, cluster: SlurmCluster
                  ) -> AsyncIterator[Trainer]:
    fake_engine_env.setenv("SLURM_CONF", str(cluster.conf))
    t = slurm_trainer(tmp_path / "data")
    await t.start()
    yield t
    await t.stop()


def slurm_id(t: Trainer, job_id: str) -> str:
    store = Store(t.data_dir / "trainer.db")
    try:
        return store.get_job(job_id).cluster_job_id
    finally:
        store.close()


async def submitted_as(t: Trainer, job_id: str, timeout: float = 30) -> str:
    """The Slurm job id once the trainer has submitted the job (the scheduler runs after CreateTrainingJob)."""
    for _ in range(int(timeout / 0.1)):
        if found := slurm_id(t, job_id):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} was not submitted to Slurm in {timeout}s")


def slurm_state(cluster: SlurmCluster, slurm_job: str) -> str:
    return cluster.run("squeue", "-h", "-t", "all", "-j", slurm_job, "-o", "%T").strip()


async def events(t: Trainer, job_id: str) -> list[S.WatchTrainingJobResponse]:
    return [e async for e in t.stub.WatchTrainingJob(S.WatchTrainingJobRequest(job_id=job_id), timeout=60)]


async def test_a_job_runs_through_slurm_with_its_full_event_stream_and_checkpoints(
        trainer: Trainer, cluster: SlurmCluster) -> None:
    corpus = (await trainer.upload(sample_text(3000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=10)
    submitted = await submitted_as(trainer, job.job_id)
    assert submitted.isdigit()
    done = await trainer.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED], timeout=90)
    assert done.step == 10
    stream = await events(trainer, job.job_id)
    states = [(e.state_changed.state, e.state_changed.message) for e in stream if e.HasField("state_changed")]
    assert states[1] == (S.JOB_STATE_QUEUED, f"submitted to Slurm as job {submitted}")
    assert [s for s, _ in states] == [S.JOB_STATE_QUEUED, S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING,
                                      S.JOB_STATE_SUCCEEDED]
    assert [e.progress.step for e in stream if e.HasField("progress")] == list(range(1, 11))
    assert [e.evaluation.step for e in stream if e.HasField("evaluation")] == [5, 10, 10]  # the last: final eval
    written = (trainer.data_dir / "jobs" / job.job_id / "events.jsonl").read_text().splitlines()
    assert len(written) == len([e for e in stream if not e.HasField("state_changed")])  # each line once
    assert [e.sequence for e in stream] == list(range(1, len(stream) + 1))
    listed = (await trainer.stub.ListCheckpoints(S.ListCheckpointsRequest(job_id=job.job_id))).checkpoints
    assert {c.kind for c in listed} == {common_pb2.CHECKPOINT_KIND_LATEST, common_pb2.CHECKPOINT_KIND_BEST}
    assert slurm_state(cluster, submitted) == "COMPLETED"
    assert slurm_id(trainer, job.job_id) == ""  # no longer held by the cluster
    assert trainer.server is not None
    registry = trainer.server.jobs.hub.metrics.registry
    assert registry.get_sample_value("chargpt_trainer_cluster_queue_wait_seconds_count", {"executor": "slurm"}) == 1
    assert registry.get_sample_value("chargpt_trainer_jobs_by_executor",
                                     {"executor": "slurm", "state": "succeeded"}) == 1


async def test_cancel_checkpoints_and_scancels(trainer: Trainer, cluster: SlurmCluster,
                                               fake_engine_env: pytest.MonkeyPatch) -> None:
    fake_engine_env.setenv("FAKE_ENGINE_STEP_SECONDS", "0.2")
    corpus = (await trainer.upload(sample_text(3000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=1000)
    submitted = await submitted_as(trainer, job.job_id)
    await trainer.wait_for(job.job_id, [S.JOB_STATE_RUNNING], timeout=60, min_step=3)
    cancelled = (await trainer.stub.CancelTrainingJob(S.CancelTrainingJobRequest(job_id=job.job_id))).job
    assert cancelled.state == S.JOB_STATE_CANCELLED and "cancelled at step" in cancelled_message(await events(
        trainer, job.job_id))
    listed = (await trainer.stub.ListCheckpoints(S.ListCheckpointsRequest(job_id=job.job_id))).checkpoints
    assert any(c.kind == common_pb2.CHECKPOINT_KIND_LATEST and c.step >= 3 for c in listed)
    assert slurm_state(cluster, submitted) in {"COMPLETED", "FAILED", "CANCELLED", "COMPLETING"}


def cancelled_message(stream: list[S.WatchTrainingJobResponse]) -> str:
    return [e.state_changed.message for e in stream if e.HasField("state_changed")][-1]


async def test_scancel_from_outside_cancels_the_job_with_the_reason(trainer: Trainer, cluster: SlurmCluster,
                                                                     fake_engine_env: pytest.MonkeyPatch) -> None:
    fake_engine_env.setenv("FAKE_ENGINE_STEP_SECONDS", "0.2")
    corpus = (await trainer.upload(sample_text(3000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=1000)
    await trainer.wait_for(job.job_id, [S.JOB_STATE_RUNNING], timeout=60, min_step=2)
    submitted = await submitted_as(trainer, job.job_id)
    cluster.run("scancel", submitted)
    done = await trainer.wait_for(job.job_id, [S.JOB_STATE_CANCELLED], timeout=30)
    message = cancelled_message(await events(trainer, job.job_id))
    assert message.startswith(f"Slurm job {submitted} ended CANCELLED") and "at step" in message, message
    assert done.error == ""


async def test_a_restarted_trainer_reattaches_without_resubmitting(tmp_path: Path, cluster: SlurmCluster,
                                                                   fake_engine_env: pytest.MonkeyPatch) -> None:
    fake_engine_env.setenv("SLURM_CONF", str(cluster.conf))
    fake_engine_env.setenv("FAKE_ENGINE_STEP_SECONDS", "0.1")
    t = slurm_trainer(tmp_path / "data")
    await t.start()
    try:
        corpus = (await t.upload(sample_text(3000))).corpus
        job = await t.create_job(corpus.corpus_id, max_steps=60)
        await t.wait_for(job.job_id, [S.JOB_STATE_RUNNING], timeout=60, min_step=5)
        submitted = await submitted_as(t, job.job_id)
        await t.stop()  # the trainer goes away; the Slurm job does not
        assert slurm_state(cluster, submitted) == "RUNNING"
        assert t.store_state(job.job_id) == "running"
        await asyncio.sleep(1.0)  # events written meanwhile are picked up after the restart
        await t.start()
        done = await t.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED], timeout=60)
        assert done.step == 60
        stream = await events(t, job.job_id)
        assert [e.progress.step for e in stream if e.HasField("progress")] == list(range(1, 61))
        names = cluster.run("squeue", "-h", "-t", "all", "-o", "%j").split()
        assert names.count(f"chargpt-{job.job_id}") == 1  # submitted once
    finally:
        await t.stop()


@pytest.mark.slow
async def test_two_tasks_on_one_node_match_the_local_two_process_result(
        tmp_path: Path, cluster: SlurmCluster, fake_engine_env: pytest.MonkeyPatch) -> None:
    fake_engine_env.setenv("SLURM_CONF", str(cluster.conf))
    results = []
    for name, t in (("slurm", slurm_trainer(tmp_path / "slurm", engine=DEFAULT_ENGINE)),
                    ("local", Trainer(tmp_path / "local", engine=DEFAULT_ENGINE))):
        await t.start()
        try:
            corpus = (await t.upload(sample_text(2000))).corpus
            job = await t.create_job(corpus.corpus_id, max_steps=6, eval_interval=3, sample_interval=0,
                                     checkpoint_interval=3, num_processes=2, seed=7)
            done = await t.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED], timeout=150)
            assert done.step == 6, name
            results.append(load_checkpoint(t.data_dir / "jobs" / job.job_id / "checkpoints" / "latest"))
        finally:
            await t.stop()
    slurm, local = results
    assert slurm.manifest.training.val_loss == pytest.approx(local.manifest.training.val_loss, abs=1e-5)
    a, b = slurm.model.state_dict(), local.model.state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)
