"""The contract between the job layer (scheduler, worker processes) and the training engine.

The job layer resolves a request into a TrainingPlan, starts a worker process, and the worker calls
`trainer_service.training.loop.run_training(plan, corpus, job_dir, sink, should_stop)`. Rank 0 reports
through the sink; the engine writes checkpoints under `job_dir / "checkpoints" / {"latest","best"}` in the core
checkpoint format plus its own resume state, and resumes from `latest` by itself when it exists. With
`plan.tensorboard_run` set, rank 0 also writes TensorBoard event files under `job_dir / "tensorboard" / run`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from chargpt.core.checkpoint import Lineage
from chargpt.core.config import ModelConfig

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
BEST = "best"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_RUN_PATTERN = r"^\w[\w.-]{0,63}$"  # one path component: `tensorboard --logdir` names the run by it
MAX_STEPS = 10_000_000
MAX_SECONDS = 30 * 86_400.0
INTERVALS = ("eval_interval", "sample_interval", "checkpoint_interval")
BOUNDED_BY = {"min_learning_rate": "learning_rate", "warmup_steps": "max_steps"}  # field -> its upper limit


class InitSource(BaseModel):
    """The checkpoint a fine-tuning job starts from, resolved and hashed when the job was created."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    vocabulary: str  # the parent's characters: the job's vocabulary is their union with the corpus's
    lineage: Lineage


class TrainingPlan(BaseModel):
    """A fully resolved job: every default applied, every field validated.

    The one place for the bounds and defaults of the training fields: the trainer overlays the TrainingSpec
    fields a request set onto its size profile and validates them here, once. Fields are declared so that a
    field's checks only read fields declared before it (pydantic validates in this order).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    job_id: str
    model: ModelConfig
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N, mps")
    num_processes: int = Field(default=1, ge=1, description="processes (ranks) per node")
    num_nodes: int = Field(default=1, ge=1, description="nodes the job spans (slurm/kubernetes executors)")
    max_steps: int = Field(ge=1, le=MAX_STEPS)
    grad_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    batch_size: int = Field(ge=1, le=65_536, description="sequences per optimizer step, across all ranks")
    learning_rate: float = Field(gt=0, le=10.0)
    min_learning_rate: float = Field(ge=0, description="default: learning_rate / 10")
    warmup_steps: int = Field(ge=0)
    lr_schedule: Literal["cosine", "constant", "linear"] = "cosine"
    optimizer: Literal["adamw", "muon"] = Field(default="adamw", description="muon: Muon for the hidden weight "
                                                "matrices, AdamW for embeddings and gains")
    weight_decay: float = Field(default=0.1, ge=0, le=10.0)
    grad_clip: float = Field(default=1.0, ge=0, le=1e6, description="0 disables clipping")
    eval_interval: int = Field(ge=0, le=MAX_STEPS, description="0: evaluate at the end only")
    sample_interval: int = Field(ge=0, le=MAX_STEPS, description="0: no samples")
    sample_length: int = Field(default=200, ge=1, le=100_000)
    seed: int = Field(default=1337, ge=0, le=2**63 - 1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    checkpoint_interval: int = Field(ge=0, le=MAX_STEPS, description="0: only at evaluations and the end")

    max_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS,
                                      description="wall-clock training budget; None: max_steps alone decides")
    fit_to_budget: tuple[str, ...] = Field(default=(), description="warmup/interval fields the request left "
                                           "unset under a budget: the engine fits them to its step horizon")
    init_from: InitSource | None = Field(default=None, description="start from this checkpoint, not random weights")

    tensorboard_run: str | None = Field(default=None, pattern=TENSORBOARD_RUN_PATTERN,
                                        description="rank 0 writes TensorBoard events to "
                                                    "job_dir/tensorboard/<this>; None: no TensorBoard")

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        """Defaults that follow other fields: the LR decays to a tenth, intervals are a tenth of the run."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        lr, steps = data.get("learning_rate"), data.get("max_steps")
        if isinstance(lr, int | float) and not isinstance(lr, bool):
            data.setdefault("min_learning_rate", lr / 10)
        if data.get("max_seconds") is not None and "fit_to_budget" not in data:
            data["fit_to_budget"] = tuple(n for n in ("warmup_steps", *INTERVALS) if n not in data)
        if isinstance(steps, int) and not isinstance(steps, bool):
            for name in INTERVALS:
                data.setdefault(name, max(1, steps // 10))
        return data

    @field_validator("batch_size")
    @classmethod
    def _batch_divides(cls, value: int, info: ValidationInfo) -> int:
        processes = info.data.get("num_processes", 1) * info.data.get("num_nodes", 1)  # ranks, all nodes
        micro = info.data.get("grad_accumulation_steps")
        if processes and micro and value % (processes * micro):
            raise ValueError(f"{value} sequences must divide evenly over {processes} processes x {micro} "
                             "accumulation steps")
        return value

    @field_validator("min_learning_rate", "warmup_steps")
    @classmethod
    def _within_limit(cls, value: float, info: ValidationInfo) -> float:
        limit_name = BOUNDED_BY[str(info.field_name)]
        limit = info.data.get(limit_name)
        if limit is not None and value > limit:
            raise ValueError(f"must be at most {limit_name} ({limit:g})")
        return value


def tensorboard_run_name(display_name: str) -> str:
    """A job's TensorBoard run directory from its display name: word characters, dots and dashes only."""
    name = re.sub(r"[^\w.-]+", "-", display_name).strip(".-")[:64].rstrip(".-")
    return name or "run"


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
    grad_norm: float | None = Field(default=None, description="the step's global gradient norm, before clipping")
    budget_seconds_left: float | None = Field(default=None, description="of max_seconds; None without a budget")


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
    schedule_complete: bool = Field(default=False, description="the run reached the end of its schedule: "
                                    "max_steps or, with max_seconds, the last step that fitted the budget")
    best_val_loss: float | None = None


ShouldStop = Callable[[], bool]
