"""A one-node Slurm cluster for tests (skipped where Slurm is not installed, a failure in CI) and what tests ask it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.tools.slurm_cluster import SlurmCluster, missing_binaries
from trainer_service.store import Store


def running_cluster(state_dir: Path, nodes: int = 1) -> Iterator[SlurmCluster]:
    """Body of a fixture: start the cluster (`nodes` slurmd on this host) under state_dir, yield it, stop it."""
    missing = missing_binaries()
    if missing:
        reason = f"Slurm not installed ({', '.join(missing)} missing): run deploy/slurm/cluster.sh install"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (.ci/run should have)")
        pytest.skip(reason)
    with SlurmCluster(state_dir, nodes) as cluster:
        yield cluster


def slurm_id(data_dir: Path, job_id: str) -> str:
    """The Slurm job id the trainer stored for the job ('' once the cluster no longer holds it)."""
    store = Store(data_dir / "trainer.db")
    try:
        return store.get_job(job_id).cluster_job_id
    finally:
        store.close()


async def submitted_as(data_dir: Path, job_id: str, timeout: float = 30) -> str:
    """The Slurm job id once the trainer has submitted the job (the scheduler runs after CreateTrainingJob)."""
    for _ in range(int(timeout / 0.1)):
        if found := slurm_id(data_dir, job_id):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} was not submitted to Slurm in {timeout}s")


def slurm_state(cluster: SlurmCluster, slurm_job: str) -> str:
    return cluster.run("squeue", "-h", "-t", "all", "-j", slurm_job, "-o", "%T").strip()


def submissions(cluster: SlurmCluster, job_id: str) -> list[str]:
    """The Slurm job ids of every sbatch of this trainer job that the controller still remembers (MinJobAge)."""
    lines = cluster.run("squeue", "-h", "-t", "all", "-o", "%i|%j").split()
    return [line.split("|")[0] for line in lines if line.split("|")[1] == f"chargpt-{job_id}"]
