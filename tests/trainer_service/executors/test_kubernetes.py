"""The kubernetes executor without an API server: its manifests against the real schemas, its reading of
recorded Job/Pod objects (written from the Kubernetes API reference), and its commands against their parsers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from chargpt.core.config import ModelConfig
from deploy.tools.check import validate_resource
from trainer_service.executors.kubernetes_manifests import (
    JOB_ID_LABEL,
    QUEUE_LABEL,
    job_manifest,
    job_status,
    service_manifest,
)
from trainer_service.settings import TrainerSettings
from trainer_service.training.api import TrainingPlan

OBJECTS = Path(__file__).resolve().parent / "k8s_objects"
JOB_DIR = Path("/data/trainer/jobs/0123456789abcdef0123456789abcdef")
GPU_SETTINGS = dict(executor="kubernetes", kubernetes_image="registry.example/chargpt-trainer:gpu",
                    kubernetes_node_selector='{"nvidia.com/gpu.present": "true"}',
                    kubernetes_tolerations='[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
                    kubernetes_queue_name="team-a", kubernetes_service_account="chargpt-train")


def plan(device: str = "cuda", num_nodes: int = 2, num_processes: int = 4) -> TrainingPlan:
    model = ModelConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32)
    return TrainingPlan(job_id=JOB_DIR.name, model=model, max_steps=10, batch_size=8 * num_nodes * num_processes,
                        learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=0, weight_decay=0.1, grad_clip=1.0,
                        eval_interval=5, sample_interval=0, sample_length=10, seed=1, checkpoint_interval=5,
                        device=device, num_processes=num_processes, num_nodes=num_nodes)


CASES = {"gpu-2-nodes-kueue": (plan(), TrainerSettings(**GPU_SETTINGS)),  # type: ignore[arg-type]
         "cpu-1-node": (plan("cpu", 1, 1), TrainerSettings(executor="kubernetes"))}


@pytest.mark.parametrize("case", CASES)
def test_rendered_manifests_pass_the_kubernetes_schemas_strictly(case: str) -> None:
    job_plan, settings = CASES[case]
    for manifest in (job_manifest(job_plan, JOB_DIR, settings), service_manifest(job_plan, settings)):
        validate_resource(manifest, f"kubernetes executor ({case})")


def test_the_gpu_job_places_one_pod_per_node_with_the_settings() -> None:
    job_plan, settings = CASES["gpu-2-nodes-kueue"]
    job, service = job_manifest(job_plan, JOB_DIR, settings), service_manifest(job_plan, settings)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["suspend"] is True and job["metadata"]["labels"][QUEUE_LABEL] == "team-a"  # Kueue admits it
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "chargpt-train" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {JOB_ID_LABEL: job_plan.job_id}
    assert spec["template"]["metadata"]["labels"][JOB_ID_LABEL] == job_plan.job_id  # re-attach finds it by label
    container = pod["containers"][0]
    assert container["image"] == "registry.example/chargpt-trainer:gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"name": "shared", "mountPath": "/data"} in container["volumeMounts"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "chargpt-shared"


def test_cpu_jobs_ask_for_no_gpu_and_no_queue() -> None:
    job_plan, settings = CASES["cpu-1-node"]
    job = job_manifest(job_plan, JOB_DIR, settings)
    assert "suspend" not in job["spec"] and QUEUE_LABEL not in job["metadata"]["labels"]
    limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits


def test_the_container_command_is_accepted_by_torchrun_and_the_worker() -> None:
    """Expand $(NODE_RANK) as the kubelet would, then parse with torchrun's and the worker's own parsers."""
    run = pytest.importorskip("torch.distributed.run")
    from trainer_service.jobs.worker import parse_args

    job_plan, settings = CASES["gpu-2-nodes-kueue"]
    container = job_manifest(job_plan, JOB_DIR, settings)["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][1:] == ["-m", "torch.distributed.run"]
    args = [re.sub(r"\$\(NODE_RANK\)", "1", arg) for arg in container["args"]]
    parsed = run.get_args_parser().parse_args(args)
    assert (parsed.nnodes, parsed.nproc_per_node, parsed.node_rank) == ("2", "4", 1)
    assert parsed.master_addr == f"chargpt-{job_plan.job_id}-0.chargpt-{job_plan.job_id}"
    worker = parse_args(parsed.training_script_args)
    assert worker.job_dir == JOB_DIR and worker.events == JOB_DIR / "events.jsonl" and worker.db is None


def recorded(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = json.loads((OBJECTS / f"{name}.json").read_text(encoding="utf-8"))
    return data["job"], data["pods"]


@pytest.mark.parametrize("name", sorted(p.stem for p in OBJECTS.glob("*.json")))
def test_recorded_objects_are_valid_kubernetes_objects(name: str) -> None:
    job, pods = recorded(name)
    for obj in (job, *pods):
        validate_resource(obj, f"k8s_objects/{name}.json")


@pytest.mark.parametrize(("name", "phase", "state", "reason", "code"), [
    ("running", "running", "Running", "", 0),
    ("unschedulable", "pending", "Pending", "Unschedulable 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.", 0),
    ("image_pull", "pending", "Pending", "ImagePullBackOff", 0),
    ("kueue_suspended", "pending", "Suspended", "JobSuspended", 0),
    ("complete", "ended", "Complete", "CompletionsReached", 0),
    ("oom_failed", "ended", "Failed", "BackoffLimitExceeded: chargpt-abc-0-x0: OOMKilled", 1),
    ("deadline_failed", "ended", "Failed", "DeadlineExceeded", 1),
])
def test_job_and_pod_status_map_to_job_phases(name: str, phase: str, state: str, reason: str, code: int) -> None:
    status = job_status(*recorded(name))
    assert (status.phase, status.state, status.code, status.cancelled) == (phase, state, code, False)
    assert reason in status.reason
    if phase == "running":
        assert status.where == "chargpt-abc-0-x0, chargpt-abc-1-x1"
