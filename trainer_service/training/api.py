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
from chargpt.errors import InvalidArgumentError
from trainer_service.training.defaults import INTERVALS, training_defaults

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
BEST = "best"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_RUN_PATTERN = r"^\w[\w.-]{0,63}$"  # one path component: `tensorboard --logdir` names the run by it
STEP_LIMIT = 10_000_000  # the most optimizer steps a request may ask for (a budget alone has no step limit)
MAX_SECONDS = 30 * 86_400.0
BOUNDED_BY = {"min_learning_rate": "learning_rate", "warmup_steps": "max_steps"}  # field -> its upper limit


class InitSource(BaseModel):
    """The checkpoint a fine-tuning job starts from, resolved and hashed when the job was created."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    vocabulary: str  # the parent's characters: the job's vocabulary is their union with the corpus's
    lineage: Lineage


class TrainingPlan(BaseModel):
    """A fully resolved job: every default applied, every field validated.

    The one place for the bounds of the training fields; their defaults come from training_defaults (the trainer
    passes its size profile, a plan written by hand gets the same rules without one), and validation happens
    here, once. Fields are declared so that a field's checks only read fields declared before it (pydantic
    validates in this order).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    job_id: str
    model: ModelConfig
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N, mps")
    num_processes: int = Field(default=1, ge=1, description="processes (ranks) per node")
    num_nodes: int = Field(default=1, ge=1, description="nodes the job spans (slurm/kubernetes executors)")
    max_steps: int | None = Field(ge=1, le=STEP_LIMIT, description="None: no step limit, max_seconds decides")
    grad_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    batch_size: int = Field(ge=1, le=65_536, description="sequences per optimizer step, across all ranks")
    learning_rate: float = Field(gt=0, le=10.0)
    min_learning_rate: float = Field(ge=0, description="default: learning_rate x the size's floor ratio")
    warmup_steps: int = Field(ge=0)
    lr_schedule: Literal["cosine", "constant", "linear"] = "cosine"
    optimizer: Literal["adamw", "muon"] = Field(default="adamw", description="muon: Muon for the hidden weight "
                                                "matrices, AdamW for embeddings and gains")
    weight_decay: float = Field(default=0.1, ge=0, le=10.0)
    grad_clip: float = Field(default=1.0, ge=0, le=1e6, description="0 disables clipping")
    # An interval of None is fitted to the budget's step horizon (only without max_steps: fit_to_budget).
    eval_interval: int | None = Field(ge=0, description="0: evaluate at the end only")
    sample_interval: int | None = Field(ge=0, description="0: no samples")
    sample_length: int = Field(default=200, ge=1, le=100_000)
    seed: int = Field(default=1337, ge=0, le=2**63 - 1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    checkpoint_interval: int | None = Field(ge=0, description="0: only at evaluations and the end")

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
        """A plan written by hand gets the defaults the trainer's plans get (one derivation: training_defaults)."""
        return training_defaults(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _ends(self) -> TrainingPlan:
        """A run needs an end (max_steps or max_seconds); only a budget's own fields wait for its horizon."""
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("max_steps: set max_steps or max_seconds")
        unfitted = [n for n in INTERVALS if getattr(self, n) is None and n not in self.fit_to_budget]
        if unfitted:
            raise ValueError(f"{unfitted[0]}: only an interval fitted to a time budget may be unset")
        return self

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
    max_steps: int | None = Field(description="the step the run ends at: max_steps, or a budget's current "
                                  "estimate; None while a budget without max_steps times its first steps")
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


class Notice(BaseModel):
    """Something the client should know about the run, e.g. that its time budget is too small for the model
    (WatchTrainingJob shows it as a state change to RUNNING with this message)."""

    kind: Literal["notice"] = "notice"
    step: int
    message: str


TrainingEvent = ProgressUpdate | EvaluationResult | TextSample | CheckpointSaved | Notice


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


def check_precision(precision: str, device_type: str, bf16_supported: bool) -> None:
    """Refuse a precision the device cannot train in (checked when the job is created, from the device facts)."""
    if precision == "fp16" and device_type != "cuda":
        raise InvalidArgumentError("training.precision", f"fp16 needs a CUDA device (this job runs on "
                                                         f"{device_type}); use bf16, fp32 or auto")
    if precision == "bf16" and (device_type == "mps" or (device_type == "cuda" and not bf16_supported)):
        raise InvalidArgumentError("training.precision", f"bf16 is not supported on this {device_type} device")
