"""The contract between the job layer (scheduler, worker processes) and the training engine.

The job layer resolves a request into a TrainingPlan, starts a worker process, and the worker calls
`trainer_service.training.loop.run_training(plan, corpus, job_dir, sink, should_stop)`. Rank 0 reports
through the sink; the engine writes checkpoints under `job_dir / "checkpoints" / {"latest","best"}` in the core
checkpoint format plus its own resume state, and resumes from `latest` by itself when it exists.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from chargpt.core.config import ModelConfig

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
BEST = "best"


class TrainingPlan(BaseModel):
    """A fully resolved job: every default applied, every field validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    model: ModelConfig
    max_steps: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="sequences per optimizer step, across all ranks")
    learning_rate: float = Field(gt=0)
    min_learning_rate: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)
    lr_schedule: Literal["cosine", "constant", "linear"] = "cosine"
    weight_decay: float = Field(ge=0)
    grad_clip: float = Field(ge=0, description="0 disables clipping")
    eval_interval: int = Field(ge=0, description="0: evaluate at the end only")
    sample_interval: int = Field(ge=0, description="0: no samples")
    sample_length: int = Field(ge=1)
    seed: int
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    checkpoint_interval: int = Field(ge=0, description="0: only at evaluations and the end")
    grad_accumulation_steps: int = Field(default=1, ge=1)
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N, mps")
    num_processes: int = Field(default=1, ge=1, description="processes (ranks) per node")
    num_nodes: int = Field(default=1, ge=1, description="nodes the job spans (slurm/kubernetes executors)")


class CorpusRef(BaseModel):
    """The corpus a job trains on; the text is read from `path` (UTF-8)."""

    model_config = ConfigDict(frozen=True)

    corpus_id: str
    name: str
    sha256: str
    path: Path


class ProgressUpdate(BaseModel):
    kind: Literal["progress"] = "progress"
    step: int
    max_steps: int
    loss: float
    learning_rate: float
    tokens_per_second: float
    tokens_per_step: int = Field(ge=0, description="tokens (characters) per optimizer step, across all ranks")
    elapsed_seconds: float
    eta_seconds: float


class EvaluationResult(BaseModel):
    kind: Literal["evaluation"] = "evaluation"
    step: int
    train_loss: float
    val_loss: float
    is_best: bool


class TextSample(BaseModel):
    kind: Literal["sample"] = "sample"
    step: int
    text: str


class CheckpointSaved(BaseModel):
    kind: Literal["checkpoint"] = "checkpoint"
    checkpoint_kind: Literal["latest", "best"]
    step: int
    path: Path
    train_loss: float | None
    val_loss: float | None
    weights_sha256: str
    size_bytes: int
    write_seconds: float | None = Field(default=None, description="time spent writing it, if the engine timed it")


TrainingEvent = ProgressUpdate | EvaluationResult | TextSample | CheckpointSaved


class EventSink(Protocol):
    """Where rank 0 reports; must be cheap and never block training for long."""

    def emit(self, event: TrainingEvent) -> None: ...


class TrainingOutcome(BaseModel):
    final_step: int
    stopped_early: bool = Field(description="should_stop() asked to stop; a latest checkpoint was written")
    best_val_loss: float | None = None


ShouldStop = Callable[[], bool]
