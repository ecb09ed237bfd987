"""The kubernetes executor: each job is an Indexed Job (one pod per node) with a headless Service for rendezvous.

It talks to the API server with the official client (in-cluster service account, else the kubeconfig). It has
been tested against rendered manifests and recorded Job/Pod objects only: no API server runs in CI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from trainer_service.executors.base import RunningJob
from trainer_service.executors.cluster import ClusterExecutor, ClusterStatus
from trainer_service.executors.kubernetes_manifests import (
    JOB_ID_LABEL,
    Manifest,
    job_manifest,
    job_status,
    resource_name,
    service_manifest,
)

T = TypeVar("T")
NOT_FOUND, CONFLICT = 404, 409


class KubernetesExecutor(ClusterExecutor):
    """Creates, watches (by polling Job and Pod status) and deletes the job's Job and Service."""

    name, cluster = "kubernetes", "Kubernetes"
    _api: Any = None

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

    async def submit(self, run: RunningJob) -> str:
        service, job = service_manifest(run.plan, self.settings), job_manifest(run.plan, run.job_dir, self.settings)
        await self._call("CoreV1Api", "create_namespaced_service", self.namespace, service, ok=(CONFLICT,))
        await self._call("BatchV1Api", "create_namespaced_job", self.namespace, job)
        return str(job["metadata"]["name"])

    async def attach(self, run: RunningJob) -> bool:
        """Find the job's Job by its label (its name is recorded too, but the label is what the pods carry)."""
        found = await self._call("BatchV1Api", "list_namespaced_job", self.namespace,
                                 label_selector=f"{JOB_ID_LABEL}={run.job.job_id}")
        if not found.items:
            return False
        run.handle = found.items[0].metadata.name
        return True

    async def _pods(self, run: RunningJob) -> list[Manifest]:
        pods = await self._call("CoreV1Api", "list_namespaced_pod", self.namespace,
                                label_selector=f"{JOB_ID_LABEL}={run.job.job_id}")
        return [self._plain(p) for p in pods.items]

    async def status(self, run: RunningJob) -> ClusterStatus | None:
        job = await self._call("BatchV1Api", "read_namespaced_job_status", run.handle, self.namespace,
                               ok=(NOT_FOUND,))
        pods = await self._pods(run)
        if job is None:  # deleted (by the trainer's cancel or from outside): ended once its pods are gone
            if pods:
                return ClusterStatus("running", "Terminating", "the Job was deleted; pods are stopping")
            return ClusterStatus("ended", "Deleted", "the Job was deleted", code=1, cancelled=True)
        status = job_status(self._plain(job), pods)
        if status.phase == "ended":
            await self._delete(run)
        return status

    async def cancel(self, run: RunningJob, force: bool) -> None:
        """Delete the Job: pods get SIGTERM and the grace period to checkpoint; forced: no grace period."""
        await self._delete(run)
        if force:
            await self._call("CoreV1Api", "delete_collection_namespaced_pod", self.namespace,
                             label_selector=f"{JOB_ID_LABEL}={run.job.job_id}", grace_period_seconds=0)

    async def _delete(self, run: RunningJob) -> None:
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
