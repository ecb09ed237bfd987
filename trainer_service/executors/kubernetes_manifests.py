"""What the kubernetes executor creates (an Indexed Job + headless Service) and how it reads Job/Pod status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer_service.executors.cluster import ClusterStatus
from trainer_service.executors.placement import DEFAULT_PLACEMENT, TENANT_LABEL, Placement
from trainer_service.jobs.layout import EVENTS_FILE
from trainer_service.settings import TrainerSettings
from trainer_service.training.api import TrainingPlan

JOB_ID_LABEL = "chargpt.io/job-id"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RENDEZVOUS_PORT = 29500
Manifest = dict[str, Any]
WORKER_ENV: list[Manifest] = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
POD_SECURITY: Manifest = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                          "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY: Manifest = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def resource_name(job_id: str) -> str:
    """Job and Service name: a DNS-1035 label (the pods are <name>-<index>.<name>)."""
    return f"chargpt-{job_id[:40]}"


def label_selector(job_id: str) -> str:
    """Selects the job's objects and pods (what re-attach and the pod listing use)."""
    return f"{JOB_ID_LABEL}={job_id}"


def labels(plan: TrainingPlan, settings: TrainerSettings, placement: Placement = DEFAULT_PLACEMENT) -> dict[str, str]:
    values = {"app.kubernetes.io/name": "chargpt-train", "app.kubernetes.io/part-of": "chargpt",
              "app.kubernetes.io/managed-by": "chargpt-trainer", JOB_ID_LABEL: plan.job_id,
              TENANT_LABEL: placement.tenant}
    if settings.kubernetes_queue_name:  # a LocalQueue per tenant lets Kueue's fair sharing take turns too
        values[QUEUE_LABEL] = (f"{settings.kubernetes_queue_name}-{placement.tenant}"
                               if settings.kubernetes_queue_per_tenant else settings.kubernetes_queue_name)
    return values


def priority_class(settings: TrainerSettings, placement: Placement) -> Manifest:
    """The pod's priorityClassName for the job's priority band, if one is configured (Kueue reads it too)."""
    name = settings.kubernetes_priority_classes.get(placement.band)
    return {"priorityClassName": name} if name else {}


def service_manifest(plan: TrainingPlan, settings: TrainerSettings,
                     placement: Placement = DEFAULT_PLACEMENT) -> Manifest:
    """Headless, publishing not-ready pods: node 0 resolves as <name>-0.<name> before any pod is ready."""
    name = resource_name(plan.job_id)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": settings.kubernetes_namespace,
                         "labels": labels(plan, settings, placement)},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {JOB_ID_LABEL: plan.job_id},
                     "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}]}}


def job_manifest(plan: TrainingPlan, job_dir: Path, settings: TrainerSettings,
                 placement: Placement = DEFAULT_PLACEMENT) -> Manifest:
    """One pod per node (completion index = torchrun node rank); suspended for Kueue to admit when queued."""
    name = resource_name(plan.job_id)
    spec: Manifest = {
        "completionMode": "Indexed", "completions": plan.num_nodes, "parallelism": plan.num_nodes,
        "backoffLimit": 0,
        # A preempted or evicted pod does not count as the job failing (Kueue re-admits, the job resumes).
        "podFailurePolicy": {"rules": [{"action": "Ignore",
                                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
        "template": {"metadata": {"labels": labels(plan, settings, placement)},
                     "spec": pod_spec(plan, job_dir, settings, placement)}}
    if settings.kubernetes_queue_name:
        spec["suspend"] = True
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": settings.kubernetes_namespace,
                         "labels": labels(plan, settings, placement)},
            "spec": spec}


def pod_spec(plan: TrainingPlan, job_dir: Path, settings: TrainerSettings,
             placement: Placement = DEFAULT_PLACEMENT) -> Manifest:
    name = resource_name(plan.job_id)
    return {"subdomain": name, "restartPolicy": "Never", **pod_settings(settings),
            **priority_class(settings, placement), "containers": [container(plan, job_dir, settings)]}


def pod_settings(settings: TrainerSettings) -> Manifest:
    """What every job pod gets, Job or TrainJob: grace to checkpoint, non-root, the volumes, placement."""
    spec: Manifest = {"terminationGracePeriodSeconds": int(settings.worker_stop_timeout_seconds) + 30,
                      "securityContext": dict(POD_SECURITY), "volumes": volumes(settings)}
    if settings.kubernetes_node_selector:
        spec["nodeSelector"] = dict(settings.kubernetes_node_selector)
    if settings.kubernetes_tolerations:
        spec["tolerations"] = [dict(t) for t in settings.kubernetes_tolerations]
    if settings.kubernetes_service_account:
        spec["serviceAccountName"] = settings.kubernetes_service_account
    return spec


def volumes(settings: TrainerSettings) -> list[Manifest]:
    """The shared claim (job directories) and a memory-backed /dev/shm (NCCL and DataLoader workers need room)."""
    return [{"name": "shared", "persistentVolumeClaim": {"claimName": settings.kubernetes_claim_name}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]


def volume_mounts(settings: TrainerSettings) -> list[Manifest]:
    return [{"name": "shared", "mountPath": settings.kubernetes_mount_path}, {"name": "dshm", "mountPath": "/dev/shm"}]


def resources(plan: TrainingPlan, settings: TrainerSettings) -> Manifest:
    """Per pod (= per node): CPU/memory from the settings, one GPU per process for CUDA jobs."""
    limits: dict[str, str] = {"memory": settings.kubernetes_memory_limit}
    if plan.device == "cuda":
        limits[settings.kubernetes_gpu_resource] = str(plan.num_processes)
    return {"requests": {"cpu": settings.kubernetes_cpu_request, "memory": settings.kubernetes_memory_request},
            "limits": limits}


def worker_args(job_dir: Path, settings: TrainerSettings) -> list[str]:
    """What torchrun starts on every node: the worker module, writing its events to the shared job directory."""
    return ["-m", "trainer_service.jobs.worker", f"--job-dir={job_dir}", f"--events={job_dir / EVENTS_FILE}",
            f"--engine={settings.engine}", f"--stop-deadline={settings.worker_stop_timeout_seconds + 15:g}"]


def container(plan: TrainingPlan, job_dir: Path, settings: TrainerSettings) -> Manifest:
    name = resource_name(plan.job_id)
    return {
        "name": "worker", "image": settings.kubernetes_image, "imagePullPolicy": "IfNotPresent",
        "command": torchrun_command(settings),
        "args": [f"--nnodes={plan.num_nodes}", f"--nproc_per_node={plan.num_processes}", "--node_rank=$(NODE_RANK)",
                 f"--master_addr={name}-0.{name}", f"--master_port={RENDEZVOUS_PORT}",
                 *worker_args(job_dir, settings)],
        "env": [{"name": "NODE_RANK", "valueFrom": {"fieldRef": {
                    "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                *WORKER_ENV],
        "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}],
        "resources": resources(plan, settings), "securityContext": dict(CONTAINER_SECURITY),
        "volumeMounts": volume_mounts(settings)}


def torchrun_command(settings: TrainerSettings) -> list[str]:
    return [settings.cluster_python, "-m", "torch.distributed.run"]


def true_condition(obj: Manifest, kind: str) -> Manifest | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def pod_problem(pods: list[Manifest]) -> str:
    """Why pods are not running or failed: Unschedulable, ImagePullBackOff, OOMKilled, Evicted..."""
    for pod in pods:
        status = pod.get("status", {})
        for container_status in status.get("containerStatuses") or []:
            for key in ("terminated", "waiting"):
                detail = (container_status.get("state") or {}).get(key) or {}
                if detail.get("reason") and detail["reason"] not in ("Completed", "ContainerCreating"):
                    return f"{pod['metadata']['name']}: {detail['reason']}"
        scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
        if scheduled and scheduled.get("status") == "False":
            return f"{pod['metadata']['name']}: {scheduled.get('reason', '')} {scheduled.get('message', '')}".strip()
        if status.get("reason"):
            return f"{pod['metadata']['name']}: {status['reason']}"
    return ""


def pods_status(pods: list[Manifest]) -> ClusterStatus:
    """Before the workload's conditions decide: pods running means running, anything else pending (and why)."""
    running = sorted(p["metadata"]["name"] for p in pods if p.get("status", {}).get("phase") == "Running")
    if running:
        return ClusterStatus("running", "Running", where=", ".join(running))
    return ClusterStatus("pending", "Pending", pod_problem(pods))


def job_status(job: Manifest, pods: list[Manifest]) -> ClusterStatus:
    """The Job's conditions decide the end; until then, pods running means running, anything else pending."""
    if (done := true_condition(job, "Complete")) is not None:
        return ClusterStatus("ended", "Complete", done.get("reason", ""))
    if (failed := true_condition(job, "Failed")) is not None:
        reason = ": ".join(p for p in (failed.get("reason", ""), pod_problem(pods)) if p)
        return ClusterStatus("ended", "Failed", reason, code=1)
    if (suspended := true_condition(job, "Suspended")) is not None:
        return ClusterStatus("pending", "Suspended", suspended.get("reason", "") or "waiting for admission")
    return pods_status(pods)
