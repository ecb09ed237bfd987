"""Tenant and priority passed on to the cluster schedulers: sbatch --nice/--qos, and the Kubernetes priority class,
tenant label and per-tenant Kueue queue, in the rendered script and manifests."""

from __future__ import annotations

import subprocess

import pytest
from pydantic import ValidationError

from deploy.tools.check import validate_resource
from tests.trainer_service.executors.test_kubernetes import CASES, GPU_SETTINGS, JOB_DIR
from tests.trainer_service.executors.test_slurm_script import plan
from trainer_service.executors.kubernetes_manifests import QUEUE_LABEL, job_manifest, service_manifest
from trainer_service.executors.kubernetes_trainjob import (
    WORKLOAD_PRIORITY_LABEL,
    trainjob_manifest,
    validate_trainjob,
)
from trainer_service.executors.placement import TENANT_LABEL, Placement
from trainer_service.executors.slurm import batch_script
from trainer_service.settings import TrainerSettings

SLURM = TrainerSettings(executor="slurm", slurm_qos='{"high": "urgent", "low": "scavenger"}')  # type: ignore[arg-type]
KUBERNETES = TrainerSettings(**{**GPU_SETTINGS, "kubernetes_queue_per_tenant": True,  # type: ignore[arg-type]
                                "kubernetes_priority_classes": '{"high": "chargpt-high", "low": "chargpt-low"}'})


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


@pytest.mark.parametrize(("priority", "expected", "absent"), [
    (3, ["--nice=300", "--qos=scavenger"], []),  # later than the tenant's other jobs
    (-1, ["--qos=urgent"], ["--nice"]),  # only Slurm operators may set a negative nice: the QOS raises it
    (0, [], ["--nice", "--qos"]),
    (2**31 - 1, ["--nice=2147483645"], []),  # the most sbatch takes
])
def test_sbatch_gets_the_jobs_priority_as_nice_and_qos(priority: int, expected: list[str], absent: list[str]) -> None:
    script = batch_script(plan(), JOB_DIR, SLURM, Placement("acme", priority))
    found = directives(script)
    assert all(d in found for d in expected), found
    assert not [d for d in found for prefix in absent if d.startswith(prefix)]
    assert "'--comment=chargpt tenant acme'" in found
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0


def test_the_kubernetes_job_carries_tenant_queue_and_priority_class() -> None:
    job_plan = CASES["gpu-2-nodes-kueue"][0]
    job = job_manifest(job_plan, JOB_DIR, KUBERNETES, Placement("acme", -2))
    service = service_manifest(job_plan, KUBERNETES, Placement("acme", -2))
    for manifest in (job, service):
        validate_resource(manifest, "kubernetes executor (tenant placement)")
        assert manifest["metadata"]["labels"][TENANT_LABEL] == "acme"
    assert job["metadata"]["labels"][QUEUE_LABEL] == "team-a-acme"  # the tenant's LocalQueue
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "chargpt-high"
    assert job["spec"]["template"]["metadata"]["labels"][TENANT_LABEL] == "acme"
    normal = job_manifest(job_plan, JOB_DIR, KUBERNETES, Placement("acme", 0))
    assert "priorityClassName" not in normal["spec"]["template"]["spec"]  # no class configured for "normal"


def test_the_trainjob_carries_them_too() -> None:
    job_plan = CASES["gpu-2-nodes-kueue"][0]
    manifest = trainjob_manifest(job_plan, JOB_DIR, KUBERNETES, Placement("beta", 7))
    validate_trainjob(manifest)
    assert manifest["metadata"]["labels"][QUEUE_LABEL] == "team-a-beta"
    # A runtime patch cannot set the pod's priority class: Kueue's workload priority label orders the TrainJob.
    assert manifest["metadata"]["labels"][WORKLOAD_PRIORITY_LABEL] == "chargpt-low"
    [patch] = manifest["spec"]["runtimePatches"]
    [node] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"][TENANT_LABEL] == "beta" and QUEUE_LABEL not in pod["metadata"]["labels"]


def test_without_tenants_the_queue_is_the_configured_one() -> None:
    job_plan, settings = CASES["gpu-2-nodes-kueue"]
    job = job_manifest(job_plan, JOB_DIR, settings)
    assert job["metadata"]["labels"][QUEUE_LABEL] == "team-a" and job["metadata"]["labels"][TENANT_LABEL] == "default"


def test_priority_bands_are_the_only_keys() -> None:
    with pytest.raises(ValidationError, match="slurm_qos"):
        TrainerSettings(slurm_qos='{"urgent": "x"}')  # type: ignore[arg-type]
