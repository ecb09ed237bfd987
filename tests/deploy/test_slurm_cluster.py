"""deploy/slurm/cluster.sh: a real one-node Slurm cluster on loopback runs, steps and cancels jobs."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.tools.slurm_cluster import SlurmCluster
from tests.support.slurm import running_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    yield from running_cluster(tmp_path_factory.mktemp("slurm"))


def job_state(cluster: SlurmCluster, job_id: str) -> str:
    """From the controller while it remembers the job, else from the job completion log (no slurmdbd here)."""
    state = cluster.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").strip()
    if state:
        return state
    lines = cluster.run("sacct", "-c", "-n", "-P", "-j", job_id, "-o", "state").split()
    return lines[-1] if lines else ""


def wait_for_state(cluster: SlurmCluster, job_id: str, wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (state := job_state(cluster, job_id)) != wanted:
        assert time.monotonic() < deadline, f"job {job_id} is {state!r}, expected {wanted}"
        time.sleep(0.2)


def test_the_node_is_idle_with_this_machines_cpus(cluster: SlurmCluster) -> None:
    node = cluster.run("sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T %c").split()
    assert node == [socket.gethostname(), "idle", str(os.cpu_count())]


def test_sbatch_runs_a_batch_job_to_completion(cluster: SlurmCluster) -> None:
    output = cluster.state_dir / "hostname-%j.out"
    job_id = cluster.run("sbatch", "--parsable", "--wait", "-o", str(output), "--wrap", "hostname").strip()
    assert Path(str(output).replace("%j", job_id)).read_text().strip() == socket.gethostname()
    wait_for_state(cluster, job_id, "COMPLETED")


def test_srun_starts_two_tasks_on_the_one_node(cluster: SlurmCluster) -> None:
    output = cluster.run("srun", "-n2", "--label", "hostname")
    assert sorted(output.splitlines()) == [f"{rank}: {socket.gethostname()}" for rank in (0, 1)]


def test_a_failing_job_is_failed_with_its_exit_code_and_reason(cluster: SlurmCluster) -> None:
    job_id = cluster.run("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "exit 3").strip()
    wait_for_state(cluster, job_id, "FAILED")
    assert cluster.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%r").strip() == "NonZeroExitCode"
    # No slurmdbd: sacct reads the job completion log (-c) instead of the accounting database.
    assert cluster.run("sacct", "-c", "-n", "-P", "-j", job_id, "-o", "state,exitcode").strip() == "FAILED|3:0"


def test_scancel_cancels_a_running_job(cluster: SlurmCluster) -> None:
    job_id = cluster.run("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 120").strip()
    wait_for_state(cluster, job_id, "RUNNING")
    cluster.run("scancel", job_id)
    wait_for_state(cluster, job_id, "CANCELLED")


def test_a_job_the_partition_can_never_run_is_refused_at_submission(cluster: SlurmCluster) -> None:
    with pytest.raises(RuntimeError, match="Node count specification invalid"):
        cluster.run("sbatch", "--nodes=2", "--wrap", "true")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    yield from running_cluster(tmp_path_factory.mktemp("slurm2"), nodes=2)


def test_two_slurmd_on_this_host_are_two_nodes_at_loopback(two_nodes: SlurmCluster) -> None:
    host = socket.gethostname()
    nodes = two_nodes.run("sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T %o").splitlines()
    assert nodes == [f"{host}-1 idle 127.0.0.1", f"{host}-2 idle 127.0.0.1"]
    output = two_nodes.run("srun", "-N2", "--ntasks-per-node=1", "--label", "bash", "-c", "echo $SLURMD_NODENAME")
    assert sorted(output.splitlines()) == [f"0: {host}-1", f"1: {host}-2"]


def test_an_urgent_job_preempts_and_requeues_a_debug_job(cluster: SlurmCluster) -> None:
    job_id = cluster.run("sbatch", "--parsable", "--requeue", "-o", "/dev/null", "--wrap", "sleep 120").strip()
    wait_for_state(cluster, job_id, "RUNNING")
    urgent = cluster.run("sbatch", "--parsable", "-p", "urgent", "--exclusive", "-o", "/dev/null", "--wrap",
                         "true").strip()
    wait_for_state(cluster, job_id, "PENDING")
    assert cluster.run("sacct", "-c", "-n", "-P", "-j", job_id, "-o", "state").split() == ["PREEMPTED"]
    wait_for_state(cluster, urgent, "COMPLETED")
    cluster.run("scancel", job_id)
