"""`python -m trainer_service.server --executor slurm` as a real process, SIGKILLed mid-job and started again."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_harness import FAKE_ENGINE, HERE, Trainer, sample_text

from chargpt.v1 import trainer_pb2 as S
from deploy.tools.slurm_cluster import SlurmCluster
from tests.support.procs import free_port, start_service, stop, wait_serving
from tests.support.slurm import slurm_state, submissions, submitted_as

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def start_trainer(data_dir: Path, port: int, log: Path, cluster: SlurmCluster) -> subprocess.Popen[bytes]:
    """The trainer as users run it, with executor=slurm; the fake engine (tests dir on PYTHONPATH) reaches the
    Slurm job through the environment sbatch exports."""
    args = ["--port", str(port), "--data-dir", str(data_dir), "--device", "cpu", "--builtin-corpora", "false",
            "--engine", FAKE_ENGINE, "--event-poll-seconds", "0.1", "--executor", "slurm",
            "--cluster-python", sys.executable, "--cluster-poll-seconds", "0.2"]
    env = {"SLURM_CONF": str(cluster.conf), "FAKE_ENGINE_STEP_SECONDS": "0.1"}
    return start_service("trainer_service.server", args, log, extra_path=[HERE], env=env)


async def test_a_sigkilled_trainer_reattaches_to_its_slurm_job_by_id(tmp_path: Path, cluster: SlurmCluster) -> None:
    data_dir, log, port = tmp_path / "data", tmp_path / "trainer.log", free_port()
    client = Trainer(data_dir)
    trainer = start_trainer(data_dir, port, log, cluster)
    try:
        await wait_serving(port)
        client.attach(port)
        corpus = (await client.upload(sample_text(3000))).corpus
        job = await client.create_job(corpus.corpus_id, max_steps=80, eval_interval=20, sample_interval=0,
                                      checkpoint_interval=10)
        await client.wait_for(job.job_id, [S.JOB_STATE_RUNNING], timeout=90, min_step=5)
        submitted = await submitted_as(data_dir, job.job_id)
        trainer.send_signal(signal.SIGKILL)  # no shutdown path runs: nothing is detached or checkpointed
        trainer.wait(10)
        await client.stop()
        assert slurm_state(cluster, submitted) == "RUNNING"  # the Slurm job does not depend on the trainer

        trainer = start_trainer(data_dir, port, log, cluster)
        await wait_serving(port)
        client.attach(port)
        done = await client.wait_for(job.job_id, [S.JOB_STATE_SUCCEEDED], timeout=120)
        assert done.step == 80
        assert submissions(cluster, job.job_id) == [submitted]  # re-attached by id, never submitted again
        assert slurm_state(cluster, submitted) == "COMPLETED"
        stream = [e async for e in client.stub.WatchTrainingJob(S.WatchTrainingJobRequest(job_id=job.job_id),
                                                                  timeout=60)]
        states = [e.state_changed.state for e in stream if e.HasField("state_changed")]
        assert states == [S.JOB_STATE_QUEUED, S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED]
        assert [e.progress.step for e in stream if e.HasField("progress")] == list(range(1, 81))
        assert [e.evaluation.step for e in stream if e.HasField("evaluation")] == [20, 40, 60, 80, 80]
        assert [e.sequence for e in stream] == list(range(1, len(stream) + 1))
        written = (data_dir / "jobs" / job.job_id / "events.jsonl").read_text().splitlines()
        assert len(written) == len([e for e in stream if not e.HasField("state_changed")])  # each line once
        await client.stop()
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(30) == 0
    finally:
        stop(trainer)
        print(log.read_text(errors="replace")[-3000:])
