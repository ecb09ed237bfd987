"""Typed results of the client: plain frozen dataclasses, never raw protobuf."""

from __future__ import annotations

import array
import math
import struct
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


def to_jsonable(value: Any) -> Any:
    """A dataclass (or list of them) as JSON-ready dicts: datetimes as ISO strings, NaN as None."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items() if k != "data"}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int = 0
    dropout: float = 0.0
    bias: bool = False


@dataclass(frozen=True)
class DeviceInfo:
    type: str
    name: str
    count: int
    memory_bytes: int
    bf16_supported: bool
    cpu_cores: int
    compute_capability: str


@dataclass(frozen=True)
class DeviceReport:
    """GetDeviceInfo: the trainer's device and the model size `auto` would pick for it."""

    device: DeviceInfo
    auto_model: ModelConfig
    auto_batch_size: int
    presets: list[str]
    auto_preset: str = ""  # the preset `auto` picks on this device
    auto_max_steps: int = 0  # that size's default schedule
    # Measured on this host (CPU; 0/empty elsewhere): GEMM peaks, auto's precision, each size candidate's tokens/s.
    gemm_gflops_fp32: float = 0.0
    gemm_gflops_bf16: float = 0.0
    auto_precision: str = ""
    candidate_tokens_per_second: dict[str, float] = field(default_factory=dict)
    calibrated_time: datetime | None = None
    calibration_seconds: float = 0.0
    # "measured", "pending" (measuring in the background: the table's defaults hold meanwhile), "not_measured"
    # (not a CPU) or "failed"
    calibration: str = ""


@dataclass(frozen=True)
class Corpus:
    corpus_id: str
    name: str
    description: str
    size_bytes: int
    num_chars: int
    vocabulary: str
    train_chars: int
    val_chars: int
    builtin: bool
    created_time: datetime | None
    tenant: str = ""  # who uploaded it ("" for built-ins); only admin keys see other tenants' corpora


@dataclass(frozen=True)
class CorpusText:
    """ReadCorpus: characters of a corpus (or of its "train" or "validation" split), exactly as uploaded."""

    corpus_id: str
    split: str  # "all", "train" or "validation"
    offset: int  # where `text` starts in the split
    split_chars: int  # characters in the whole split
    text: str


@dataclass(frozen=True)
class UploadResult:
    corpus: Corpus
    created: bool = field(metadata={"doc": "False when identical content was already stored"})


@dataclass(frozen=True)
class TrainingJob:
    job_id: str
    display_name: str
    state: str  # QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED
    corpus_id: str
    model: ModelConfig
    training: dict[str, Any]  # the resolved hyper-parameters (TrainingSpec fields)
    device_request: str
    num_processes: int
    step: int
    train_loss: float
    val_loss: float
    best_val_loss: float
    tokens_per_second: float
    error: str
    parameter_count: int
    created_time: datetime | None
    started_time: datetime | None
    finished_time: datetime | None
    device: str
    num_nodes: int = 1  # nodes the job spans; num_processes is per node
    parent: Lineage | None = None  # the checkpoint a fine-tune started from
    priority: int = 0  # within its tenant's queue: lower starts first
    tenant: str = ""  # the tenant that created it

    @property
    def max_steps(self) -> int | None:
        """The job's step limit; None: no limit, its training.max_seconds budget alone ends it."""
        steps = self.training.get("max_steps")
        return None if steps is None else int(steps)

    @property
    def finished(self) -> bool:
        return self.state in ("SUCCEEDED", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class Checkpoint:
    job_id: str
    kind: str  # "best" or "latest"
    step: int
    train_loss: float
    val_loss: float
    weights_sha256: str
    size_bytes: int
    created_time: datetime | None


@dataclass(frozen=True, kw_only=True)
class JobEvent:
    """One event of a job's history; `sequence` increases by one per event, from 1."""

    sequence: int
    time: datetime | None
    job_id: str


@dataclass(frozen=True, kw_only=True)
class StateChanged(JobEvent):
    state: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Progress(JobEvent):
    step: int
    max_steps: int | None  # where the run ends (a budget's estimate); None until a budget-only job has one
    loss: float
    learning_rate: float
    tokens_per_second: float
    elapsed_seconds: float
    eta_seconds: float
    budget_seconds_left: float | None = None  # of training.max_seconds; None without a budget


@dataclass(frozen=True, kw_only=True)
class Evaluation(JobEvent):
    step: int
    train_loss: float
    val_loss: float
    is_best: bool


@dataclass(frozen=True, kw_only=True)
class Sample(JobEvent):
    step: int
    text: str


@dataclass(frozen=True, kw_only=True)
class CheckpointWritten(JobEvent):
    checkpoint: Checkpoint


@dataclass(frozen=True)
class DownloadedCheckpoint:
    path: str
    checkpoint: Checkpoint
    files: dict[str, str]  # file name -> verified sha256


@dataclass(frozen=True)
class ImportResult:
    """An imported model: the finished job that holds it (use its job_id wherever a job goes) and its checkpoint."""

    job: TrainingJob
    checkpoint: Checkpoint


@dataclass(frozen=True)
class TrainingMetadata:
    job_id: str
    corpus_id: str
    corpus_name: str
    corpus_sha256: str
    step: int
    train_loss: float
    val_loss: float
    created_time: datetime | None
    library_versions: dict[str, str]


@dataclass(frozen=True)
class Lineage:
    """A fine-tuned model's parent checkpoint, or an imported model's origin (source_format set)."""

    job_id: str  # "" for a checkpoint directory no trainer job wrote
    kind: str  # "best", "latest" or "" (a directory)
    weights_sha256: str
    corpus_id: str
    corpus_name: str
    corpus_sha256: str
    step: int
    source_format: str = ""  # "nanogpt" or "hf" for an imported model (weights_sha256: the original file's)
    source_vocabulary_sha256: str = ""  # an imported model's meta.pkl or tokenizer.json

    def describe(self) -> str:
        if self.source_format:
            return (f"a {self.source_format} model imported at step {self.step}; original weights sha256 "
                    f"{self.weights_sha256[:16]}…")
        origin = f"job {self.job_id} ({self.kind or 'checkpoint'})" if self.job_id else "a checkpoint directory"
        return (f"{origin} at step {self.step}, trained on {self.corpus_name or self.corpus_id or '?'}; "
                f"weights sha256 {self.weights_sha256[:16]}…")


@dataclass(frozen=True)
class Model:
    name: str
    state: str  # LOADING, READY, FAILED or UNLOADING
    source: str
    config: ModelConfig
    vocabulary: str
    parameter_count: int
    device: str
    dtype: str
    training: TrainingMetadata
    error: str
    loaded_time: datetime | None
    weights_sha256: str
    parent: Lineage | None = None  # the checkpoint a fine-tuned model started from
    kv_cache_dtype: str = ""  # how it is served: the KV cache's dtype, and the decode batch from which
    parallel_decode_from: int = 0  # a step uses every torch thread (both measured per host unless set; 0: one)
    narrow_decode_from: int = 1  # decode batches from this size use `dtype` weights, smaller ones float32
    split_decode_from: int = 0  # decode batches from this size run as row groups of one thread each (0: never)
    calibration: str = ""  # whether those are measured: "measured", "pending" (defaults until timed), "not_measured"
    ggml_decode_up_to: int = 0  # decode batches of at most this many rows run on llama.cpp's ggml (0: none)


@dataclass(frozen=True)
class LoadResult:
    model: Model
    loaded: bool  # False when the same name and source were already loaded


@dataclass(frozen=True)
class GenerationSummary:
    finish_reason: str  # LENGTH, STOP or CANCELLED
    prompt_tokens: int
    generated_tokens: int
    seed: int
    prompt_truncated: bool
    prompt_chars_dropped: int
    queue_seconds: float
    time_to_first_token_seconds: float
    total_seconds: float
    stop_sequence: str
    temperature: float
    top_k: int
    top_p: float
    index: int = 0  # which of the request's n samples


@dataclass(frozen=True)
class TokenLogprob:
    """A generated character's natural-log probability under the model's raw distribution (before temperature,
    penalties and filtering), and the most likely characters at that step, most likely first."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass(frozen=True)
class GenerationChoice:
    index: int
    text: str
    summary: GenerationSummary
    logprobs: list[TokenLogprob]


@dataclass(frozen=True)
class GenerationResult:
    """Sample 0's text, summary and logprobs; `choices` holds every sample (n of them)."""

    text: str
    summary: GenerationSummary
    logprobs: list[TokenLogprob] = field(default_factory=list)
    choices: list[GenerationChoice] = field(default_factory=list)


@dataclass(frozen=True)
class ScoreResult:
    mean_nll: float
    bits_per_char: float
    perplexity: float
    num_tokens: int
    token_logprobs: list[float]


@dataclass(frozen=True)
class Attention:
    """Softmax attention weights of shape [len(layers), len(heads), T, T]; no numpy needed to read them."""

    tokens: list[str]
    layers: list[int]
    heads: list[int]
    shape: tuple[int, ...]
    dtype: str  # "float16" or "float32"
    data: bytes = field(repr=False)

    def values(self) -> array.array[float]:
        """All weights, row-major, as a flat array of Python floats (array('f'), so memoryview works)."""
        count = math.prod(self.shape)
        if self.dtype == "float32":
            flat = array.array("f", self.data)
        else:  # float16: struct knows IEEE half precision, array does not
            flat = array.array("f", struct.unpack(f"<{count}e", self.data))
        if sys.byteorder == "big" and self.dtype == "float32":
            flat.byteswap()
        return flat

    def matrix(self, layer_index: int, head_index: int) -> list[list[float]]:
        """The T x T matrix of the layer and head at these positions in `layers` and `heads`."""
        t = self.shape[2]
        start = (layer_index * self.shape[1] + head_index) * t * t
        flat = self.values()[start:start + t * t]
        return [list(flat[i * t:(i + 1) * t]) for i in range(t)]

    def to_lists(self) -> list[list[list[list[float]]]]:
        """The weights as nested lists [layer][head][query][key]."""
        return [[self.matrix(li, hi) for hi in range(self.shape[1])] for li in range(self.shape[0])]

    def to_numpy(self) -> Any:
        """A numpy array of `shape` (needs numpy installed)."""
        import numpy as np

        dtype = np.dtype("<f2") if self.dtype == "float16" else np.dtype("<f4")
        return np.frombuffer(self.data, dtype=dtype).reshape(self.shape).astype(np.float32)

    def _repr_html_(self) -> str:
        """In Jupyter: the explorable view (layer/head selectors, hover a character to see what it attends to)."""
        from chargpt_client.attention_view import attention_html

        return attention_html(self)
