"""The kubernetes executor's other workload: a Kubeflow Trainer TrainJob, rendered, validated and read back."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from trainer_service.executors.cluster import ClusterStatus
from trainer_service.executors.kubernetes_manifests import (
    CONTAINER_SECURITY,
    QUEUE_LABEL,
    WORKER_ENV,
    Manifest,
    labels,
    pod_problem,
    pod_settings,
    pods_status,
    resource_name,
    resources,
    torchrun_command,
    true_condition,
    volume_mounts,
    worker_args,
)
from trainer_service.executors.placement import DEFAULT_PLACEMENT, Placement
from trainer_service.settings import TrainerSettings
from trainer_service.training.api import TrainingPlan

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
HANDLE_PREFIX = "trainjob/"  # recorded handle "trainjob/<name>": a restarted trainer knows which kind to look for
PATCH_MANAGER = "chargpt.io/trainer"  # owner of our runtimePatches entry (Kueue adds its own beside it)
# Kubeflow's torch runtimes name the trainer's replicated job and its container "node"; the torch plugin sets
# PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT there, which torchrun reads
# as the defaults of its --nnodes, --nproc_per_node, ... options.
NODE = "node"
WORKLOAD_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"


def serves_trainjobs(group_list: Manifest) -> bool:
    """From the API server's group discovery (GET /apis, an APIGroupList): is the TrainJob version served?"""
    return any(group.get("name") == GROUP and any(v.get("version") == VERSION for v in group.get("versions") or [])
               for group in group_list.get("groups") or [])


def trainjob_name(handle: str) -> str:
    return handle.removeprefix(HANDLE_PREFIX)


def trainjob_manifest(plan: TrainingPlan, job_dir: Path, settings: TrainerSettings,
                      placement: Placement = DEFAULT_PLACEMENT) -> Manifest:
    """numNodes pods of the runtime's `node` job, each running torchrun with the same worker as the Job path."""
    patch = pod_patch(plan, settings, placement)
    spec: Manifest = {
        "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime",
                       "name": settings.kubernetes_training_runtime},
        "trainer": {"image": settings.kubernetes_image, "command": torchrun_command(settings),
                    "args": worker_args(job_dir, settings), "env": [dict(e) for e in WORKER_ENV],
                    "numNodes": plan.num_nodes, "numProcPerNode": plan.num_processes,
                    "resourcesPerNode": resources(plan, settings)},
        "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": NODE, "template": {"spec": {"template": patch}}}]}}}}]}
    if settings.kubernetes_queue_name:
        spec["suspend"] = True  # Kueue resumes it once admitted, as with the Job path
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob",
            "metadata": {"name": resource_name(plan.job_id), "namespace": settings.kubernetes_namespace,
                         "labels": {**labels(plan, settings, placement),
                                    **workload_priority(settings, placement)}},
            "spec": spec}


def workload_priority(settings: TrainerSettings, placement: Placement) -> dict[str, str]:
    """A runtime patch may not set a pod's priorityClassName: Kueue's WorkloadPriorityClass label orders the
    TrainJob instead (a class of the same name as the configured priority class)."""
    name = settings.kubernetes_priority_classes.get(placement.band)
    return {WORKLOAD_PRIORITY_LABEL: name} if name else {}


def pod_patch(plan: TrainingPlan, settings: TrainerSettings, placement: Placement = DEFAULT_PLACEMENT) -> Manifest:
    """What the runtime's pod template gains: the job-id label (pods listed by it), the shared claim, placement."""
    # Kueue queues the TrainJob, not its pods.
    pod_labels = {k: v for k, v in labels(plan, settings, placement).items() if k != QUEUE_LABEL}
    spec = {**pod_settings(settings), "containers": [{"name": NODE, "securityContext": dict(CONTAINER_SECURITY),
                            "volumeMounts": volume_mounts(settings)}]}
    return {"metadata": {"labels": pod_labels}, "spec": spec}


def validate_trainjob(obj: Manifest) -> None:
    """Strictly against the TrainJob CRD's models (kubeflow-trainer-api); ValueError naming the first bad field."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    validate_against(TrainerV1alpha1TrainJob, obj, "TrainJob")


def validate_against(model: Any, obj: Manifest, what: str) -> None:
    """The models' from_dict ignores unknown keys, so the check is a round trip: what they give back must equal
    what went in (times compared as RFC 3339 text)."""
    from pydantic import ValidationError

    try:
        parsed = model.from_dict(obj)
    except ValidationError as exc:
        raise ValueError(f"not a valid {what}: {exc}") from None
    sent, back = _json(_without_none(obj)), _json(parsed.to_dict() if parsed is not None else {})
    if back != sent:
        raise ValueError(f"not a valid {what}: a field unknown to its schema or changed: {_difference(sent, back)}")


def trainjob_status(trainjob: Manifest, pods: list[Manifest]) -> ClusterStatus:
    """The TrainJob's conditions (Complete/Failed carry the JobSet's reason) decide; until then its pods do."""
    if (done := true_condition(trainjob, "Complete")) is not None:
        return ClusterStatus("ended", "Complete", done.get("reason", ""))
    if (failed := true_condition(trainjob, "Failed")) is not None:
        why = pod_problem(pods) or failed.get("message", "")
        return ClusterStatus("ended", "Failed", ": ".join(p for p in (failed.get("reason", ""), why) if p), code=1)
    if (suspended := true_condition(trainjob, "Suspended")) is not None:
        return ClusterStatus("pending", "Suspended", suspended.get("reason", "") or "waiting for admission")
    created = _condition(trainjob, "Created")
    if created is not None and created.get("status") == "False":  # the controller retries building its JobSet
        reason = ": ".join(p for p in (created.get("reason", ""), created.get("message", "")) if p)
        return ClusterStatus("pending", "NotCreated", reason)
    return pods_status(pods)


def _condition(obj: Manifest, kind: str) -> Manifest | None:
    return next((dict(c) for c in obj.get("status", {}).get("conditions") or [] if c.get("type") == kind), None)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _json(value: Any) -> Any:
    """Plain JSON values; datetimes as RFC 3339 the way the API server writes them."""
    def rfc3339(when: Any) -> str:
        if isinstance(when, datetime):
            return when.isoformat().replace("+00:00", "Z")
        raise TypeError(f"not JSON: {when!r}")
    return json.loads(json.dumps(value, default=rfc3339))


def _difference(expected: Any, got: Any, path: str = "") -> str:
    """The first place the round trip differs, as a JSON path (what the error message names)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in expected.keys() | got.keys():
            if expected.get(key) != got.get(key):
                return _difference(expected.get(key), got.get(key), f"{path}.{key}")
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        for i, (a, b) in enumerate(zip(expected, got, strict=True)):
            if a != b:
                return _difference(a, b, f"{path}[{i}]")
    return f"{path or '.'}: {expected!r} became {got!r}"
