"""Where jobs run: this node (local), a Slurm cluster (slurm) or a Kubernetes cluster (kubernetes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer_service.executors.base import Executor
    from trainer_service.jobs.events import EventHub
    from trainer_service.settings import TrainerSettings
    from trainer_service.store import Store


def make_executor(settings: TrainerSettings, store: Store, hub: EventHub) -> Executor:
    """The executor the `executor` setting names (the cluster ones import only when chosen)."""
    if settings.executor == "slurm":
        from trainer_service.executors.slurm import SlurmExecutor

        return SlurmExecutor(settings, store, hub)
    if settings.executor == "kubernetes":
        from trainer_service.executors.kubernetes import KubernetesExecutor

        return KubernetesExecutor(settings, store, hub)
    from trainer_service.executors.local import LocalExecutor

    return LocalExecutor(settings, store)
