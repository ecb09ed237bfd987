"""The kubernetes executor's TrainJob path without an API server: the rendered TrainJob against the CRD's models
(kubeflow-trainer-api, strictly), its reading of recorded TrainJob/Pod objects and of group discovery (written from
the CRD and API reference), its commands against their parsers and its API calls against the client's methods."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from deploy.tools.check import validate_resource
from tests.trainer_service.executors.test_kubernetes import CASES, JOB_DIR
from trainer_service.executors.kubernetes_manifests import JOB_ID_LABEL, QUEUE_LABEL
from trainer_service.executors.kubernetes_trainjob import (
    serves_trainjobs,
    trainjob_manifest,
    trainjob_status,
    validate_against,
    validate_trainjob,
)
from trainer_service.settings import TrainerSettings

OBJECTS = Path(__file__).resolve().parent / "k8s_objects" / "trainjob"
RECORDED = sorted(p.stem for p in OBJECTS.glob("*.json") if not p.stem.startswith("discovery"))
EXECUTOR = Path(__file__).resolve().parents[3] / "trainer_service" / "executors" / "kubernetes.py"


@pytest.mark.parametrize("case", CASES)
def test_rendered_trainjobs_pass_the_trainjob_models_strictly(case: str) -> None:
    job_plan, settings = CASES[case]
    validate_trainjob(trainjob_manifest(job_plan, JOB_DIR, settings))


@pytest.mark.parametrize(("where", "bad", "message"), [
    (("spec", "trainer"), {"numProcsPerNode": 4}, ".spec.trainer.numProcsPerNode: 4 became None"),  # a typo
    (("spec", "trainer"), {"numNodes": "2"}, "numNodes"),  # a string where the CRD has an integer
    (("spec",), {"podTemplateOverrides": []}, ".spec.podTemplateOverrides"),  # a field of an older CRD version
])
def test_validation_fails_on_fields_the_crd_does_not_have(where: tuple[str, ...], bad: dict[str, Any],
                                                          message: str) -> None:
    job_plan, settings = CASES["gpu-2-nodes-kueue"]
    manifest = trainjob_manifest(job_plan, JOB_DIR, settings)
    target = manifest
    for key in where:
        target = target[key]
    target.update(bad)
    with pytest.raises(ValueError, match="not a valid TrainJob") as error:
        validate_trainjob(manifest)
    assert message in str(error.value)


def pod_patch(manifest: dict[str, Any]) -> dict[str, Any]:
    [patch] = manifest["spec"]["runtimePatches"]
    [node] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"  # the Kubeflow torch runtimes' trainer job
    return dict(node["template"]["spec"]["template"])


def test_the_gpu_trainjob_carries_the_plan_and_the_settings() -> None:
    job_plan, base = CASES["gpu-2-nodes-kueue"]
    settings = base.model_copy(update={"kubernetes_training_runtime": "torch-cuda-251"})
    manifest = trainjob_manifest(job_plan, JOB_DIR, settings)
    spec, labels = manifest["spec"], manifest["metadata"]["labels"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-cuda-251"}
    assert labels[JOB_ID_LABEL] == job_plan.job_id and labels[QUEUE_LABEL] == "team-a" and spec["suspend"] is True
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["image"] == "registry.example/chargpt-trainer:gpu"
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"name": "PYTHONUNBUFFERED", "value": "1"} in trainer["env"]
    pod = pod_patch(manifest)
    assert pod["metadata"]["labels"][JOB_ID_LABEL] == job_plan.job_id  # pods listed and force-deleted by it
    assert QUEUE_LABEL not in pod["metadata"]["labels"]  # Kueue queues the TrainJob, not its pods
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["spec"]["serviceAccountName"] == "chargpt-train"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "chargpt-shared"
    [container] = pod["spec"]["containers"]
    assert container["name"] == "node" and {"name": "shared", "mountPath": "/data"} in container["volumeMounts"]


def test_cpu_trainjobs_ask_for_no_gpu_and_no_queue() -> None:
    job_plan, settings = CASES["cpu-1-node"]
    manifest = trainjob_manifest(job_plan, JOB_DIR, settings)
    assert "suspend" not in manifest["spec"] and QUEUE_LABEL not in manifest["metadata"]["labels"]
    assert "nvidia.com/gpu" not in manifest["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert (manifest["spec"]["trainer"]["numNodes"], manifest["spec"]["trainer"]["numProcPerNode"]) == (1, 1)


def test_the_trainer_command_runs_the_job_paths_worker_under_torchrun_with_the_runtimes_env(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch runtime sets PET_* in the `node` container; torchrun takes its options' defaults from them."""
    run = pytest.importorskip("torch.distributed.run")
    from trainer_service.executors.kubernetes_manifests import job_manifest
    from trainer_service.jobs.worker import parse_args

    job_plan, settings = CASES["gpu-2-nodes-kueue"]
    trainer = trainjob_manifest(job_plan, JOB_DIR, settings)["spec"]["trainer"]
    job_container = job_manifest(job_plan, JOB_DIR, settings)["spec"]["template"]["spec"]["containers"][0]
    assert trainer["command"] == job_container["command"]
    assert trainer["args"] == job_container["args"][-len(trainer["args"]):]  # the same worker, same options
    env = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "1",
           "PET_MASTER_ADDR": "chargpt-x-node-0-0.chargpt-x", "PET_MASTER_PORT": "29400"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parsed = run.get_args_parser().parse_args(trainer["args"])
    assert (parsed.nnodes, parsed.nproc_per_node, parsed.node_rank, parsed.master_port) == ("2", "4", 1, 29400)
    assert parsed.module and parsed.training_script == "trainer_service.jobs.worker"
    worker = parse_args(parsed.training_script_args)
    assert worker.job_dir == JOB_DIR and worker.events == JOB_DIR / "events.jsonl" and worker.db is None


def recorded(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = json.loads((OBJECTS / f"{name}.json").read_text(encoding="utf-8"))
    return data["trainjob"], data["pods"]


@pytest.mark.parametrize("name", RECORDED)
def test_recorded_objects_are_valid_trainjobs_and_pods(name: str) -> None:
    trainjob, pods = recorded(name)
    validate_trainjob(trainjob)
    for pod in pods:
        validate_resource(pod, f"k8s_objects/trainjob/{name}.json")


@pytest.mark.parametrize(("name", "phase", "state", "reason", "code"), [
    ("running", "running", "Running", "", 0),
    ("unschedulable", "pending", "Pending", "Unschedulable 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.", 0),
    ("kueue_suspended", "pending", "Suspended", "Suspended", 0),
    ("not_created", "pending", "NotCreated", 'JobsBuildFailed: ClusterTrainingRuntime.trainer.kubeflow.org "torch-', 0),
    ("complete", "ended", "Complete", "AllJobsCompleted", 0),
    ("oom_failed", "ended", "Failed", "FailedJobs: chargpt-abc-node-0-0-x0: OOMKilled", 1),
    ("deadline_failed", "ended", "Failed", "DeadlineExceeded: TrainJob exceeded its active deadline", 1),
])
def test_trainjob_and_pod_status_map_to_job_phases(name: str, phase: str, state: str, reason: str,
                                                   code: int) -> None:
    status = trainjob_status(*recorded(name))
    assert (status.phase, status.state, status.code, status.cancelled) == (phase, state, code, False)
    assert reason in status.reason
    if phase == "running":
        assert status.where == "chargpt-abc-node-0-0-x0, chargpt-abc-node-0-1-x1"


@pytest.mark.parametrize(("name", "served"), [("discovery_with_trainer", True), ("discovery_without_trainer", False)])
def test_discovery_tells_whether_the_cluster_serves_trainjobs(name: str, served: bool) -> None:
    from kubeflow_trainer_api.models import IoK8sApimachineryPkgApisMetaV1APIGroupList

    groups = json.loads((OBJECTS / f"{name}.json").read_text(encoding="utf-8"))
    validate_against(IoK8sApimachineryPkgApisMetaV1APIGroupList, groups, "APIGroupList")
    assert serves_trainjobs(groups) is served


def test_the_workload_setting_is_validated_and_an_explicit_choice_asks_no_cluster(tmp_path: Path) -> None:
    from trainer_service.executors.kubernetes import KubernetesExecutor
    from trainer_service.jobs.events import EventHub
    from trainer_service.metrics import TrainerMetrics
    from trainer_service.store import Store

    assert TrainerSettings().kubernetes_workload == "auto"
    with pytest.raises(ValueError, match="kubernetes_workload"):
        TrainerSettings(kubernetes_workload="jobset")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kubernetes_training_runtime"):
        TrainerSettings(kubernetes_training_runtime="")
    store = Store(tmp_path / "jobs.db")
    for choice in ("job", "trainjob"):
        settings = TrainerSettings(executor="kubernetes", kubernetes_workload=choice)  # type: ignore[arg-type]
        executor = KubernetesExecutor(settings, store, EventHub(store, TrainerMetrics(), 0.1))
        assert asyncio.run(executor.workload()) == choice and executor._api is None  # no client was configured


def executor_calls() -> list[tuple[str, str, int, set[str]]]:
    """Every `self._call("Api", "method", *args, **kwargs)` in kubernetes.py: (api, method, #args, kwargs)."""
    calls = []
    for node in ast.walk(ast.parse(EXECUTOR.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "_call":
            api, method = (arg.value for arg in node.args[:2] if isinstance(arg, ast.Constant))
            calls.append((str(api), str(method), len(node.args) - 2, {k.arg for k in node.keywords} - {"ok", None}))
    return calls


def test_every_api_call_binds_to_the_kubernetes_clients_method() -> None:
    """Argument count and keyword names against the installed client (what a wrong call would fail on)."""
    from kubernetes import client

    calls = executor_calls()
    assert {"create_namespaced_custom_object", "get_namespaced_custom_object_status", "get_api_versions",
            "list_namespaced_custom_object", "delete_namespaced_custom_object"} <= {c[1] for c in calls}
    for api, method, positional, keywords in calls:
        signature = inspect.signature(getattr(getattr(client, api), method))
        signature.bind(None, *range(positional), **dict.fromkeys(keywords))  # raises TypeError when it does not fit
