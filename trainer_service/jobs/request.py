"""A CreateTrainingJob request in the job layer's terms; the servicer builds it from the wire message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

CheckpointKind = Literal["", "best", "latest"]


@dataclass(frozen=True)
class ParentRef:
    """init_from: a trainer job's checkpoint (kind "" means best) or a checkpoint directory under the data dir."""

    job_id: str | None = None  # set: that job's checkpoint
    path: str | None = None  # set: that directory, relative to the data directory (or absolute, inside it)
    kind: CheckpointKind = ""  # of job_id's checkpoints


@dataclass(frozen=True)
class JobRequest:
    """What to train: the fields a client set, unresolved (jobs/plan.py applies the defaults and bounds)."""

    corpus_id: str
    display_name: str = ""
    training: Mapping[str, Any] = field(default_factory=dict)  # the TrainingSpec fields set, as TrainingPlan values
    preset: str = ""  # a size profile's name; "" or "auto": the device's size
    custom: Mapping[str, Any] | None = None  # a custom architecture's ModelConfig fields (vocab_size: the corpus's)
    device: str = ""  # "" or "auto": the trainer's default device
    num_processes: int | None = None  # None: 1
    num_nodes: int | None = None  # None: 1
    init_from: ParentRef | None = None
    priority: int = 0  # within the tenant's queue: lower first
