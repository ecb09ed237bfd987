"""The trainer with executor=slurm against a real one-node Slurm cluster (deploy/slurm/cluster.sh)."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from trainer_harness import Trainer, sample_text

from chargpt.core.checkpoint import Checkpoint, load_checkpoint
from chargpt.v1 import common_pb2
from chargpt.v1 import trainer_pb2 as S
from deploy.tools.slurm_cluster import SlurmCluster
from tests.support.slurm import slurm_id, slurm_state, submissions, submitted_as
from trainer_service.settings import DEFAULT_ENGINE

pytestmark = pytest.mark.timeout(240)


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


async def events(t: Trainer, job_id: str) -> list[S.WatchTrainingJobResponse]:
    return [e async for e in t.stub.WatchTrainingJob(S.WatchTrainingJobRequest(job_id=job_id), timeout=60)]


async def test_a_job_runs_through_slurm_with_its_full_event_stream_and_checkpoints(
        trainer: Trainer, cluster: SlurmCluster) -> None:
    corpus = (await trainer.upload(sample_text(3000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=10)
    submitted = await submitted_as(trainer.data_dir, job.job_id)
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
    assert slurm_id(trainer.data_dir, job.job_id) == ""  # no longer held by the cluster
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
    submitted = await submitted_as(trainer.data_dir, job.job_id)
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
    submitted = await submitted_as(trainer.data_dir, job.job_id)
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
        submitted = await submitted_as(t.data_dir, job.job_id)
        await t.stop()  # the trainer goes away; the Slurm job does not
        assert slurm_state(cluster, submitted) == "RUNNING"
        assert t.store_state(job.job_id) == "running"
        await asyncio.sleep(1.0)  # events written meanwhile are picked up after the restart
        await t.start()
        done = await t.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED], timeout=60)
        assert done.step == 60
        stream = await events(t, job.job_id)
        assert [e.progress.step for e in stream if e.HasField("progress")] == list(range(1, 61))
        assert submissions(cluster, job.job_id) == [submitted]  # submitted once
    finally:
        await t.stop()


async def train_and_load(t: Trainer, num_nodes: int, num_processes: int) -> Checkpoint:
    """Train the same 6-step job (real engine, gloo) on `t`; its final checkpoint."""
    await t.start()
    try:
        corpus = (await t.upload(sample_text(2000))).corpus
        job = await t.create_job(corpus.corpus_id, max_steps=6, eval_interval=3, sample_interval=0,
                                 checkpoint_interval=3, num_processes=num_processes, num_nodes=num_nodes, seed=7)
        done = await t.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED], timeout=150)
        assert done.step == 6
        return load_checkpoint(t.data_dir / "jobs" / job.job_id / "checkpoints" / "latest")
    finally:
        await t.stop()


def assert_same_training(a: Checkpoint, b: Checkpoint) -> None:
    assert a.manifest.training.val_loss == pytest.approx(b.manifest.training.val_loss, abs=1e-5)
    weights_a, weights_b = a.model.state_dict(), b.model.state_dict()
    assert all(torch.allclose(weights_a[k], weights_b[k], rtol=0, atol=1e-5) for k in weights_a)


@pytest.mark.slow
async def test_two_tasks_on_one_node_match_the_local_two_process_result(
        tmp_path: Path, cluster: SlurmCluster, fake_engine_env: pytest.MonkeyPatch) -> None:
    fake_engine_env.setenv("SLURM_CONF", str(cluster.conf))
    slurm = await train_and_load(slurm_trainer(tmp_path / "slurm", engine=DEFAULT_ENGINE), 1, 2)
    local = await train_and_load(Trainer(tmp_path / "local", engine=DEFAULT_ENGINE), 1, 2)
    assert_same_training(slurm, local)


@pytest.mark.slow
async def test_two_nodes_of_one_process_match_the_local_two_process_result(
        tmp_path: Path, two_node_cluster: SlurmCluster, fake_engine_env: pytest.MonkeyPatch) -> None:
    """srun starts one torchrun agent on each of two nodes; they meet at the first node's address (NodeAddr)."""
    fake_engine_env.setenv("SLURM_CONF", str(two_node_cluster.conf))
    # One intra-op thread per rank on both sides: alone on its "node" a rank would take both cores, and a
    # different thread count sums in a different order (differences of ~1e-4 after 6 steps).
    fake_engine_env.setenv("CHARGPT_TRAIN_THREADS", "1")
    slurm = await train_and_load(slurm_trainer(tmp_path / "slurm", engine=DEFAULT_ENGINE), 2, 1)
    local = await train_and_load(Trainer(tmp_path / "local", engine=DEFAULT_ENGINE), 1, 2)
    assert_same_training(slurm, local)
    jobs = two_node_cluster.run("squeue", "-h", "-t", "all", "-o", "%T|%D|%N").split()
    assert jobs == [f"COMPLETED|2|{socket.gethostname()}-[1-2]"]


async def requeue(cluster: SlurmCluster, slurm_job: str, how: str) -> None:
    """Take the running job off its node the way an operator (scontrol requeue) or Slurm's preemption does."""
    if how == "requeue":
        cluster.run("scontrol", "requeue", slurm_job)
    else:  # an urgent-partition job wanting the whole node requeues the debug-partition job (PreemptMode=REQUEUE)
        cluster.run("sbatch", "--parsable", "-p", "urgent", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 1")
    for _ in range(300):
        if cluster.run("squeue", "-h", "-j", slurm_job, "-o", "%T|%r").strip() == "PENDING|BeginTime":
            # Slurm holds a requeued batch job for cred_expire (120 s); let it start as soon as it has room.
            cluster.run("scontrol", "update", f"jobid={slurm_job}", "StartTime=now")
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"Slurm job {slurm_job} was not requeued")


@pytest.mark.parametrize(("how", "cause"), [("requeue", "requeued"), ("preempt", "preempted")])
async def test_a_requeued_or_preempted_job_resumes_from_its_latest_checkpoint(
        trainer: Trainer, cluster: SlurmCluster, fake_engine_env: pytest.MonkeyPatch, how: str, cause: str) -> None:
    fake_engine_env.setenv("FAKE_ENGINE_STEP_SECONDS", "0.2")
    corpus = (await trainer.upload(sample_text(3000))).corpus
    job = await trainer.create_job(corpus.corpus_id, max_steps=30, checkpoint_interval=3)
    submitted = await submitted_as(trainer.data_dir, job.job_id)
    await trainer.wait_for(job.job_id, [S.JOB_STATE_RUNNING], timeout=60, min_step=7)
    await requeue(cluster, submitted, how)
    done = await trainer.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED], timeout=120)
    assert done.step == 30
    stream = await events(trainer, job.job_id)
    changes = [(e.state_changed.state, e.state_changed.message) for e in stream if e.HasField("state_changed")]
    assert [s for s, _ in changes] == [S.JOB_STATE_QUEUED, S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING,
                                       S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED]
    # the reason as the trainer first saw the pending job (BeginTime, or none yet), or no pending state at all
    # when Slurm counted the restart before the trainer's poll saw it pending
    assert re.fullmatch(rf"Slurm {cause} it(, now PENDING( \((BeginTime|Priority|Resources)\))?)?; will resume "
                        "from the latest checkpoint", changes[3][1]), changes[3][1]
    resumed_from = int(changes[4][1].rsplit("resuming from step ", 1)[1])
    # Slurm's SIGTERM reached the workers, which checkpointed where they were: the next run starts from there
    # (no step trained twice, none skipped), with one Slurm job id throughout.
    requeued_at = next(e.sequence for e in stream if e.HasField("state_changed") and e.state_changed.message
                       == changes[3][1])
    before = [e.progress.step for e in stream if e.HasField("progress") and e.sequence < requeued_at]
    assert resumed_from >= 7 and before[-1] == resumed_from
    assert [e.progress.step for e in stream if e.HasField("progress")] == list(range(1, 31))
    saved = [e.checkpoint_written.checkpoint.step for e in stream if e.HasField("checkpoint_written")]
    assert resumed_from in saved and saved[-1] == 30
    listed = (await trainer.stub.ListCheckpoints(S.ListCheckpointsRequest(job_id=job.job_id))).checkpoints
    assert [c.step for c in listed if c.kind == common_pb2.CHECKPOINT_KIND_LATEST] == [30]
    assert submissions(cluster, job.job_id) == [submitted]
    assert slurm_state(cluster, submitted) == "COMPLETED"
    # each run's script recorded where its events begin (SLURM_RESTART_COUNT 0, then 1)
    runs = (trainer.data_dir / "jobs" / job.job_id / "runs.txt").read_text().splitlines()
    assert [line.split()[0] for line in runs] == ["0", "1"] and int(runs[1].split()[1]) > int(runs[0].split()[1])
