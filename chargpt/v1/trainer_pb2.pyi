import datetime

from chargpt.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_AUTO: _ClassVar[Precision]
    PRECISION_FP32: _ClassVar[Precision]
    PRECISION_BF16: _ClassVar[Precision]
    PRECISION_FP16: _ClassVar[Precision]

class CompileMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPILE_MODE_UNSPECIFIED: _ClassVar[CompileMode]
    COMPILE_MODE_AUTO: _ClassVar[CompileMode]
    COMPILE_MODE_ON: _ClassVar[CompileMode]
    COMPILE_MODE_OFF: _ClassVar[CompileMode]

class LrSchedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LR_SCHEDULE_UNSPECIFIED: _ClassVar[LrSchedule]
    LR_SCHEDULE_COSINE: _ClassVar[LrSchedule]
    LR_SCHEDULE_CONSTANT: _ClassVar[LrSchedule]
    LR_SCHEDULE_LINEAR: _ClassVar[LrSchedule]

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_ADAMW: _ClassVar[Optimizer]
    OPTIMIZER_MUON: _ClassVar[Optimizer]

class ImportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMPORT_FORMAT_UNSPECIFIED: _ClassVar[ImportFormat]
    IMPORT_FORMAT_NANOGPT: _ClassVar[ImportFormat]
    IMPORT_FORMAT_HF: _ClassVar[ImportFormat]

class CorpusSplit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CORPUS_SPLIT_UNSPECIFIED: _ClassVar[CorpusSplit]
    CORPUS_SPLIT_TRAIN: _ClassVar[CorpusSplit]
    CORPUS_SPLIT_VALIDATION: _ClassVar[CorpusSplit]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
PRECISION_UNSPECIFIED: Precision
PRECISION_AUTO: Precision
PRECISION_FP32: Precision
PRECISION_BF16: Precision
PRECISION_FP16: Precision
COMPILE_MODE_UNSPECIFIED: CompileMode
COMPILE_MODE_AUTO: CompileMode
COMPILE_MODE_ON: CompileMode
COMPILE_MODE_OFF: CompileMode
LR_SCHEDULE_UNSPECIFIED: LrSchedule
LR_SCHEDULE_COSINE: LrSchedule
LR_SCHEDULE_CONSTANT: LrSchedule
LR_SCHEDULE_LINEAR: LrSchedule
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_ADAMW: Optimizer
OPTIMIZER_MUON: Optimizer
IMPORT_FORMAT_UNSPECIFIED: ImportFormat
IMPORT_FORMAT_NANOGPT: ImportFormat
IMPORT_FORMAT_HF: ImportFormat
CORPUS_SPLIT_UNSPECIFIED: CorpusSplit
CORPUS_SPLIT_TRAIN: CorpusSplit
CORPUS_SPLIT_VALIDATION: CorpusSplit

class GetDeviceInfoRequest(_message.Message):
    __slots__ = ("recalibrate",)
    RECALIBRATE_FIELD_NUMBER: _ClassVar[int]
    recalibrate: bool
    def __init__(self, recalibrate: _Optional[bool] = ...) -> None: ...

class GetDeviceInfoResponse(_message.Message):
    __slots__ = ("device", "auto_model", "auto_batch_size", "presets", "auto_preset", "auto_max_steps", "gemm_gflops_fp32", "gemm_gflops_bf16", "auto_precision", "candidate_tokens_per_second", "calibrated_time", "calibration_seconds", "calibration")
    class CandidateTokensPerSecondEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    AUTO_MODEL_FIELD_NUMBER: _ClassVar[int]
    AUTO_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PRESETS_FIELD_NUMBER: _ClassVar[int]
    AUTO_PRESET_FIELD_NUMBER: _ClassVar[int]
    AUTO_MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    GEMM_GFLOPS_FP32_FIELD_NUMBER: _ClassVar[int]
    GEMM_GFLOPS_BF16_FIELD_NUMBER: _ClassVar[int]
    AUTO_PRECISION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_TIME_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    device: _common_pb2.DeviceInfo
    auto_model: _common_pb2.ModelConfig
    auto_batch_size: int
    presets: _containers.RepeatedScalarFieldContainer[str]
    auto_preset: str
    auto_max_steps: int
    gemm_gflops_fp32: float
    gemm_gflops_bf16: float
    auto_precision: str
    candidate_tokens_per_second: _containers.ScalarMap[str, float]
    calibrated_time: _timestamp_pb2.Timestamp
    calibration_seconds: float
    calibration: _common_pb2.CalibrationState
    def __init__(self, device: _Optional[_Union[_common_pb2.DeviceInfo, _Mapping]] = ..., auto_model: _Optional[_Union[_common_pb2.ModelConfig, _Mapping]] = ..., auto_batch_size: _Optional[int] = ..., presets: _Optional[_Iterable[str]] = ..., auto_preset: _Optional[str] = ..., auto_max_steps: _Optional[int] = ..., gemm_gflops_fp32: _Optional[float] = ..., gemm_gflops_bf16: _Optional[float] = ..., auto_precision: _Optional[str] = ..., candidate_tokens_per_second: _Optional[_Mapping[str, float]] = ..., calibrated_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., calibration_seconds: _Optional[float] = ..., calibration: _Optional[_Union[_common_pb2.CalibrationState, str]] = ...) -> None: ...

class Corpus(_message.Message):
    __slots__ = ("corpus_id", "name", "description", "size_bytes", "num_chars", "vocabulary", "train_chars", "val_chars", "builtin", "created_time", "tenant")
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_CHARS_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    TRAIN_CHARS_FIELD_NUMBER: _ClassVar[int]
    VAL_CHARS_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    corpus_id: str
    name: str
    description: str
    size_bytes: int
    num_chars: int
    vocabulary: str
    train_chars: int
    val_chars: int
    builtin: bool
    created_time: _timestamp_pb2.Timestamp
    tenant: str
    def __init__(self, corpus_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., size_bytes: _Optional[int] = ..., num_chars: _Optional[int] = ..., vocabulary: _Optional[str] = ..., train_chars: _Optional[int] = ..., val_chars: _Optional[int] = ..., builtin: _Optional[bool] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant: _Optional[str] = ...) -> None: ...

class CorpusHeader(_message.Message):
    __slots__ = ("name", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class UploadCorpusRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: CorpusHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[CorpusHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadCorpusResponse(_message.Message):
    __slots__ = ("corpus", "created")
    CORPUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    corpus: Corpus
    created: bool
    def __init__(self, corpus: _Optional[_Union[Corpus, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListCorporaRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCorporaResponse(_message.Message):
    __slots__ = ("corpora",)
    CORPORA_FIELD_NUMBER: _ClassVar[int]
    corpora: _containers.RepeatedCompositeFieldContainer[Corpus]
    def __init__(self, corpora: _Optional[_Iterable[_Union[Corpus, _Mapping]]] = ...) -> None: ...

class GetCorpusRequest(_message.Message):
    __slots__ = ("corpus_id",)
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    corpus_id: str
    def __init__(self, corpus_id: _Optional[str] = ...) -> None: ...

class GetCorpusResponse(_message.Message):
    __slots__ = ("corpus",)
    CORPUS_FIELD_NUMBER: _ClassVar[int]
    corpus: Corpus
    def __init__(self, corpus: _Optional[_Union[Corpus, _Mapping]] = ...) -> None: ...

class DeleteCorpusRequest(_message.Message):
    __slots__ = ("corpus_id",)
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    corpus_id: str
    def __init__(self, corpus_id: _Optional[str] = ...) -> None: ...

class DeleteCorpusResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("preset", "custom")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    preset: str
    custom: _common_pb2.ModelConfig
    def __init__(self, preset: _Optional[str] = ..., custom: _Optional[_Union[_common_pb2.ModelConfig, _Mapping]] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("max_steps", "batch_size", "learning_rate", "min_learning_rate", "warmup_steps", "lr_schedule", "weight_decay", "grad_clip", "eval_interval", "sample_interval", "sample_length", "seed", "precision", "compile", "checkpoint_interval", "grad_accumulation_steps", "max_seconds", "optimizer")
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    GRAD_CLIP_FIELD_NUMBER: _ClassVar[int]
    EVAL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    COMPILE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    GRAD_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    max_steps: int
    batch_size: int
    learning_rate: float
    min_learning_rate: float
    warmup_steps: int
    lr_schedule: LrSchedule
    weight_decay: float
    grad_clip: float
    eval_interval: int
    sample_interval: int
    sample_length: int
    seed: int
    precision: Precision
    compile: CompileMode
    checkpoint_interval: int
    grad_accumulation_steps: int
    max_seconds: float
    optimizer: Optimizer
    def __init__(self, max_steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., min_learning_rate: _Optional[float] = ..., warmup_steps: _Optional[int] = ..., lr_schedule: _Optional[_Union[LrSchedule, str]] = ..., weight_decay: _Optional[float] = ..., grad_clip: _Optional[float] = ..., eval_interval: _Optional[int] = ..., sample_interval: _Optional[int] = ..., sample_length: _Optional[int] = ..., seed: _Optional[int] = ..., precision: _Optional[_Union[Precision, str]] = ..., compile: _Optional[_Union[CompileMode, str]] = ..., checkpoint_interval: _Optional[int] = ..., grad_accumulation_steps: _Optional[int] = ..., max_seconds: _Optional[float] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ...) -> None: ...

class ResourceSpec(_message.Message):
    __slots__ = ("device", "num_processes", "num_nodes")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NUM_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    device: str
    num_processes: int
    num_nodes: int
    def __init__(self, device: _Optional[str] = ..., num_processes: _Optional[int] = ..., num_nodes: _Optional[int] = ...) -> None: ...

class TrainingJob(_message.Message):
    __slots__ = ("job_id", "display_name", "state", "corpus_id", "model", "training", "resources", "step", "train_loss", "val_loss", "best_val_loss", "tokens_per_second", "error", "parameter_count", "created_time", "started_time", "finished_time", "device", "parent", "priority", "tenant")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    BEST_VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    STARTED_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TIME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    display_name: str
    state: JobState
    corpus_id: str
    model: _common_pb2.ModelConfig
    training: TrainingSpec
    resources: ResourceSpec
    step: int
    train_loss: float
    val_loss: float
    best_val_loss: float
    tokens_per_second: float
    error: str
    parameter_count: int
    created_time: _timestamp_pb2.Timestamp
    started_time: _timestamp_pb2.Timestamp
    finished_time: _timestamp_pb2.Timestamp
    device: str
    parent: _common_pb2.Lineage
    priority: int
    tenant: str
    def __init__(self, job_id: _Optional[str] = ..., display_name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., corpus_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelConfig, _Mapping]] = ..., training: _Optional[_Union[TrainingSpec, _Mapping]] = ..., resources: _Optional[_Union[ResourceSpec, _Mapping]] = ..., step: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., best_val_loss: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., error: _Optional[str] = ..., parameter_count: _Optional[int] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., device: _Optional[str] = ..., parent: _Optional[_Union[_common_pb2.Lineage, _Mapping]] = ..., priority: _Optional[int] = ..., tenant: _Optional[str] = ...) -> None: ...

class CreateTrainingJobRequest(_message.Message):
    __slots__ = ("corpus_id", "display_name", "model", "training", "resources", "init_from", "priority")
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    INIT_FROM_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    corpus_id: str
    display_name: str
    model: ModelSpec
    training: TrainingSpec
    resources: ResourceSpec
    init_from: InitFrom
    priority: int
    def __init__(self, corpus_id: _Optional[str] = ..., display_name: _Optional[str] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., training: _Optional[_Union[TrainingSpec, _Mapping]] = ..., resources: _Optional[_Union[ResourceSpec, _Mapping]] = ..., init_from: _Optional[_Union[InitFrom, _Mapping]] = ..., priority: _Optional[int] = ...) -> None: ...

class InitFrom(_message.Message):
    __slots__ = ("job_id", "path", "kind")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    path: str
    kind: _common_pb2.CheckpointKind
    def __init__(self, job_id: _Optional[str] = ..., path: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.CheckpointKind, str]] = ...) -> None: ...

class CreateTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: TrainingJob
    def __init__(self, job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...

class GetTrainingJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: TrainingJob
    def __init__(self, job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...

class ListTrainingJobsRequest(_message.Message):
    __slots__ = ("states", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrainingJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[TrainingJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[TrainingJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelTrainingJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: TrainingJob
    def __init__(self, job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...

class ResumeTrainingJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: TrainingJob
    def __init__(self, job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...

class WatchTrainingJobRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class StateChangedEvent(_message.Message):
    __slots__ = ("state", "message")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    message: str
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("step", "max_steps", "loss", "learning_rate", "tokens_per_second", "elapsed_seconds", "eta_seconds", "budget_seconds_left")
    STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SECONDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    step: int
    max_steps: int
    loss: float
    learning_rate: float
    tokens_per_second: float
    elapsed_seconds: float
    eta_seconds: float
    budget_seconds_left: float
    def __init__(self, step: _Optional[int] = ..., max_steps: _Optional[int] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., budget_seconds_left: _Optional[float] = ...) -> None: ...

class EvaluationEvent(_message.Message):
    __slots__ = ("step", "train_loss", "val_loss", "is_best")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    IS_BEST_FIELD_NUMBER: _ClassVar[int]
    step: int
    train_loss: float
    val_loss: float
    is_best: bool
    def __init__(self, step: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., is_best: _Optional[bool] = ...) -> None: ...

class SampleEvent(_message.Message):
    __slots__ = ("step", "text")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    step: int
    text: str
    def __init__(self, step: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class CheckpointWrittenEvent(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class WatchTrainingJobResponse(_message.Message):
    __slots__ = ("sequence", "time", "job_id", "state_changed", "progress", "evaluation", "sample", "checkpoint_written")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    job_id: str
    state_changed: StateChangedEvent
    progress: ProgressEvent
    evaluation: EvaluationEvent
    sample: SampleEvent
    checkpoint_written: CheckpointWrittenEvent
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_id: _Optional[str] = ..., state_changed: _Optional[_Union[StateChangedEvent, _Mapping]] = ..., progress: _Optional[_Union[ProgressEvent, _Mapping]] = ..., evaluation: _Optional[_Union[EvaluationEvent, _Mapping]] = ..., sample: _Optional[_Union[SampleEvent, _Mapping]] = ..., checkpoint_written: _Optional[_Union[CheckpointWrittenEvent, _Mapping]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("job_id", "kind", "step", "train_loss", "val_loss", "weights_sha256", "size_bytes", "created_time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: _common_pb2.CheckpointKind
    step: int
    train_loss: float
    val_loss: float
    weights_sha256: str
    size_bytes: int
    created_time: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.CheckpointKind, str]] = ..., step: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., weights_sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class DownloadCheckpointRequest(_message.Message):
    __slots__ = ("job_id", "kind", "chunk_size")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: _common_pb2.CheckpointKind
    chunk_size: int
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.CheckpointKind, str]] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class CheckpointFile(_message.Message):
    __slots__ = ("name", "size_bytes", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class CheckpointArchiveHeader(_message.Message):
    __slots__ = ("checkpoint", "files")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    files: _containers.RepeatedCompositeFieldContainer[CheckpointFile]
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., files: _Optional[_Iterable[_Union[CheckpointFile, _Mapping]]] = ...) -> None: ...

class CheckpointChunk(_message.Message):
    __slots__ = ("file_name", "offset", "data", "sha256")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    offset: int
    data: bytes
    sha256: str
    def __init__(self, file_name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...

class DownloadCheckpointResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: CheckpointArchiveHeader
    chunk: CheckpointChunk
    def __init__(self, header: _Optional[_Union[CheckpointArchiveHeader, _Mapping]] = ..., chunk: _Optional[_Union[CheckpointChunk, _Mapping]] = ...) -> None: ...

class ImportModelHeader(_message.Message):
    __slots__ = ("name", "format", "files")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: ImportFormat
    files: _containers.RepeatedCompositeFieldContainer[CheckpointFile]
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[ImportFormat, str]] = ..., files: _Optional[_Iterable[_Union[CheckpointFile, _Mapping]]] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ImportModelHeader
    chunk: CheckpointChunk
    def __init__(self, header: _Optional[_Union[ImportModelHeader, _Mapping]] = ..., chunk: _Optional[_Union[CheckpointChunk, _Mapping]] = ...) -> None: ...

class ImportModelResponse(_message.Message):
    __slots__ = ("job", "checkpoint")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    job: TrainingJob
    checkpoint: Checkpoint
    def __init__(self, job: _Optional[_Union[TrainingJob, _Mapping]] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class ReadCorpusRequest(_message.Message):
    __slots__ = ("corpus_id", "split", "offset", "length")
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    corpus_id: str
    split: CorpusSplit
    offset: int
    length: int
    def __init__(self, corpus_id: _Optional[str] = ..., split: _Optional[_Union[CorpusSplit, str]] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ReadCorpusResponse(_message.Message):
    __slots__ = ("corpus_id", "split", "offset", "split_chars", "text")
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_CHARS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    corpus_id: str
    split: CorpusSplit
    offset: int
    split_chars: int
    text: str
    def __init__(self, corpus_id: _Optional[str] = ..., split: _Optional[_Union[CorpusSplit, str]] = ..., offset: _Optional[int] = ..., split_chars: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...
