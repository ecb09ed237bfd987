"""The trainer's stored records: corpora, jobs and job events as rows of the store, and the job states."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from chargpt.server.tenancy.principal import DEFAULT_TENANT

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({QUEUED, RUNNING})


class CorpusRecord(BaseModel):
    corpus_id: str
    name: str
    description: str
    size_bytes: int
    num_chars: int
    vocabulary: str
    train_chars: int
    val_chars: int
    builtin: bool
    created: float
    path: str
    owner: str = DEFAULT_TENANT  # the tenant that uploaded it; SHARED_OWNER for built-ins
    sha256: str = ""  # of the text (the id too, except for tenants other than the default: see corpus_key)


class JobRecord(BaseModel):
    seq: int
    job_id: str
    display_name: str
    state: str
    corpus_id: str
    plan: str  # TrainingPlan JSON
    parameter_count: int
    step: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    tokens_per_second: float
    error: str
    cancel_requested: bool
    created: float
    started: float | None
    finished: float | None
    executor: str = "local"  # where it was last launched: local, slurm, kubernetes
    cluster_job_id: str = ""  # the Slurm job id or Kubernetes Job name while the cluster holds it
    events_offset: int = 0  # bytes of the job's events.jsonl already in the event log (remote executors)
    submitted: float | None = None  # when it was last handed to the cluster (queue-wait metric)
    cluster_run: int = 0  # the cluster's count of restarts of the job when the trainer last saw it run
    owner: str = DEFAULT_TENANT  # the tenant that created it (its checkpoints and exports are the tenant's too)
    priority: int = 0  # within its tenant's queue: lower runs first (vLLM's convention)


class EventRecord(BaseModel):
    id: int
    job_id: str
    seq: int
    time: float
    kind: str  # "state", "progress", "evaluation", "sample", "checkpoint", "notice"
    payload: dict[str, Any]
