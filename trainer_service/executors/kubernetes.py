"""The kubernetes executor: each job is an Indexed Job (one pod per node) with a headless Service for rendezvous,
or a Kubeflow Trainer TrainJob when the cluster serves trainer.kubeflow.org (setting kubernetes_workload).

It talks to the API server with the official client (in-cluster service account, else the kubeconfig). It has
been tested against rendered manifests and recorded Job/TrainJob/Pod objects only: no API server runs in CI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from trainer_service.executors.base import RunningJob
from trainer_service.executors.cluster import ClusterExecutor, ClusterStatus
from trainer_service.executors.kubernetes_manifests import (
    Manifest,
    job_manifest,
    job_status,
    label_selector,
    resource_name,
    service_manifest,
)
from trainer_service.executors.kubernetes_trainjob import (
    GROUP,
    HANDLE_PREFIX,
    PLURAL,
    VERSION,
    serves_trainjobs,
    trainjob_manifest,
    trainjob_name,
    trainjob_status,
    validate_trainjob,
)

T = TypeVar("T")
NOT_FOUND, CONFLICT = 404, 409
Workload = Literal["job", "trainjob"]


class KubernetesExecutor(ClusterExecutor):
    """Creates, watches (by polling Job or TrainJob and Pod status) and deletes each job's objects."""

    name, cluster = "kubernetes", "Kubernetes"
    _api: Any = None
    _workload: Workload | None = None  # asked of the cluster once (auto), then kept

    def _client(self) -> Any:
        """The API client, configured on first use (importing kubernetes only when this executor is chosen)."""
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            self._api = client.ApiClient()
        return self._api

    async def _call(self, api: str, method: str, *args: Any, **kwargs: Any) -> Any:
        from kubernetes import client

        target = getattr(getattr(client, api)(self._client()), method)
        return await asyncio.to_thread(_checked, target, *args, **kwargs)

    def _plain(self, obj: Any) -> Manifest:
        return dict(self._client().sanitize_for_serialization(obj))

    @property
    def namespace(self) -> str:
        return self.settings.kubernetes_namespace

    async def workload(self) -> Workload:
        """What jobs become: the setting, or with `auto` a TrainJob when the API server serves its group."""
        if self._workload is None:
            if self.settings.kubernetes_workload != "auto":
                self._workload = self.settings.kubernetes_workload
            else:  # group discovery (GET /apis): open to every authenticated client, no Role rule needed
                groups = self._plain(await self._call("ApisApi", "get_api_versions"))
                self._workload = "trainjob" if serves_trainjobs(groups) else "job"
        return self._workload

    async def submit(self, run: RunningJob) -> str:
        if await self.workload() == "trainjob":
            trainjob = trainjob_manifest(run.plan, run.job_dir, self.settings, run.placement)
            try:
                validate_trainjob(trainjob)
            except ValueError as exc:
                raise RuntimeError(str(exc)) from None
            await self._call("CustomObjectsApi", "create_namespaced_custom_object", GROUP, VERSION, self.namespace,
                             PLURAL, trainjob)
            return HANDLE_PREFIX + str(trainjob["metadata"]["name"])
        service = service_manifest(run.plan, self.settings, run.placement)
        job = job_manifest(run.plan, run.job_dir, self.settings, run.placement)
        await self._call("CoreV1Api", "create_namespaced_service", self.namespace, service, ok=(CONFLICT,))
        await self._call("BatchV1Api", "create_namespaced_job", self.namespace, job)
        return str(job["metadata"]["name"])

    async def _kind_of(self, run: RunningJob) -> Workload:
        """The recorded handle says which kind a job is; a job recorded without one is what jobs are now."""
        recorded = str(run.handle or run.job.cluster_job_id or "")
        if recorded:
            return "trainjob" if recorded.startswith(HANDLE_PREFIX) else "job"
        return await self.workload()

    async def attach(self, run: RunningJob) -> bool:
        """Find the job's Job or TrainJob by its label (its name is recorded too, but the label is what counts)."""
        selector = label_selector(run.job.job_id)
        if await self._kind_of(run) == "trainjob":
            found = await self._call("CustomObjectsApi", "list_namespaced_custom_object", GROUP, VERSION,
                                     self.namespace, PLURAL, label_selector=selector)
            names = [item["metadata"]["name"] for item in found["items"]]
            run.handle = HANDLE_PREFIX + names[0] if names else None
        else:
            jobs = await self._call("BatchV1Api", "list_namespaced_job", self.namespace, label_selector=selector)
            run.handle = jobs.items[0].metadata.name if jobs.items else None
        return run.handle is not None

    async def _pods(self, run: RunningJob) -> list[Manifest]:
        pods = await self._call("CoreV1Api", "list_namespaced_pod", self.namespace,
                                label_selector=label_selector(run.job.job_id))
        return [self._plain(p) for p in pods.items]

    async def status(self, run: RunningJob) -> ClusterStatus | None:
        trainjob = str(run.handle).startswith(HANDLE_PREFIX)
        if trainjob:
            found = await self._call("CustomObjectsApi", "get_namespaced_custom_object_status", GROUP, VERSION,
                                     self.namespace, PLURAL, trainjob_name(run.handle), ok=(NOT_FOUND,))
        else:
            job = await self._call("BatchV1Api", "read_namespaced_job_status", run.handle, self.namespace,
                                   ok=(NOT_FOUND,))
            found = None if job is None else self._plain(job)
        pods = await self._pods(run)
        kind = "TrainJob" if trainjob else "Job"
        if found is None:  # deleted (by the trainer's cancel or from outside): ended once its pods are gone
            if pods:
                return ClusterStatus("running", "Terminating", f"the {kind} was deleted; pods are stopping")
            return ClusterStatus("ended", "Deleted", f"the {kind} was deleted", code=1, cancelled=True)
        status = trainjob_status(found, pods) if trainjob else job_status(found, pods)
        if status.phase == "ended":
            await self._delete(run)
        return status

    async def cancel(self, run: RunningJob, force: bool) -> None:
        """Delete the Job: pods get SIGTERM and the grace period to checkpoint; forced: no grace period."""
        await self._delete(run)
        if force:
            await self._call("CoreV1Api", "delete_collection_namespaced_pod", self.namespace,
                             label_selector=label_selector(run.job.job_id), grace_period_seconds=0)

    async def _delete(self, run: RunningJob) -> None:
        """Background propagation: the call returns at once; the garbage collector removes what the object owns."""
        if str(run.handle).startswith(HANDLE_PREFIX):  # its JobSet, Jobs, pods and Service go with it
            await self._call("CustomObjectsApi", "delete_namespaced_custom_object", GROUP, VERSION, self.namespace,
                             PLURAL, trainjob_name(run.handle), propagation_policy="Background", ok=(NOT_FOUND,))
            return
        name = resource_name(run.job.job_id)
        await self._call("BatchV1Api", "delete_namespaced_job", run.handle, self.namespace,
                         propagation_policy="Background", ok=(NOT_FOUND,))
        await self._call("CoreV1Api", "delete_namespaced_service", name, self.namespace, ok=(NOT_FOUND,))


def _checked(method: Callable[..., T], *args: Any, ok: tuple[int, ...] = (), **kwargs: Any) -> T | None:
    """Call the API; statuses in `ok` give None, other API errors become RuntimeError with the server's reason."""
    from kubernetes.client.exceptions import ApiException

    try:
        return method(*args, **kwargs)
    except ApiException as exc:
        if exc.status in ok:
            return None
        raise RuntimeError(f"Kubernetes API: {exc.status} {exc.reason}: {exc.body}") from None
