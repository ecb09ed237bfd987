import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckpointKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECKPOINT_KIND_UNSPECIFIED: _ClassVar[CheckpointKind]
    CHECKPOINT_KIND_LATEST: _ClassVar[CheckpointKind]
    CHECKPOINT_KIND_BEST: _ClassVar[CheckpointKind]

class CalibrationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALIBRATION_STATE_UNSPECIFIED: _ClassVar[CalibrationState]
    CALIBRATION_STATE_PENDING: _ClassVar[CalibrationState]
    CALIBRATION_STATE_MEASURED: _ClassVar[CalibrationState]
    CALIBRATION_STATE_NOT_MEASURED: _ClassVar[CalibrationState]
    CALIBRATION_STATE_FAILED: _ClassVar[CalibrationState]

class TensorDtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_DTYPE_UNSPECIFIED: _ClassVar[TensorDtype]
    TENSOR_DTYPE_FLOAT16: _ClassVar[TensorDtype]
    TENSOR_DTYPE_FLOAT32: _ClassVar[TensorDtype]
CHECKPOINT_KIND_UNSPECIFIED: CheckpointKind
CHECKPOINT_KIND_LATEST: CheckpointKind
CHECKPOINT_KIND_BEST: CheckpointKind
CALIBRATION_STATE_UNSPECIFIED: CalibrationState
CALIBRATION_STATE_PENDING: CalibrationState
CALIBRATION_STATE_MEASURED: CalibrationState
CALIBRATION_STATE_NOT_MEASURED: CalibrationState
CALIBRATION_STATE_FAILED: CalibrationState
TENSOR_DTYPE_UNSPECIFIED: TensorDtype
TENSOR_DTYPE_FLOAT16: TensorDtype
TENSOR_DTYPE_FLOAT32: TensorDtype

class ModelConfig(_message.Message):
    __slots__ = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias")
    N_LAYER_FIELD_NUMBER: _ClassVar[int]
    N_HEAD_FIELD_NUMBER: _ClassVar[int]
    N_EMBD_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    dropout: float
    bias: bool
    def __init__(self, n_layer: _Optional[int] = ..., n_head: _Optional[int] = ..., n_embd: _Optional[int] = ..., block_size: _Optional[int] = ..., vocab_size: _Optional[int] = ..., dropout: _Optional[float] = ..., bias: _Optional[bool] = ...) -> None: ...

class TrainingMetadata(_message.Message):
    __slots__ = ("job_id", "corpus_id", "corpus_name", "corpus_sha256", "step", "train_loss", "val_loss", "created_time", "library_versions")
    class LibraryVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    CORPUS_NAME_FIELD_NUMBER: _ClassVar[int]
    CORPUS_SHA256_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    corpus_id: str
    corpus_name: str
    corpus_sha256: str
    step: int
    train_loss: float
    val_loss: float
    created_time: _timestamp_pb2.Timestamp
    library_versions: _containers.ScalarMap[str, str]
    def __init__(self, job_id: _Optional[str] = ..., corpus_id: _Optional[str] = ..., corpus_name: _Optional[str] = ..., corpus_sha256: _Optional[str] = ..., step: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., library_versions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("type", "name", "count", "memory_bytes", "bf16_supported", "cpu_cores", "compute_capability")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BF16_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    type: str
    name: str
    count: int
    memory_bytes: int
    bf16_supported: bool
    cpu_cores: int
    compute_capability: str
    def __init__(self, type: _Optional[str] = ..., name: _Optional[str] = ..., count: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., bf16_supported: _Optional[bool] = ..., cpu_cores: _Optional[int] = ..., compute_capability: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: TensorDtype
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[TensorDtype, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("job_id", "kind", "weights_sha256", "corpus_id", "corpus_name", "corpus_sha256", "step", "source_format", "source_vocabulary_sha256")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    CORPUS_ID_FIELD_NUMBER: _ClassVar[int]
    CORPUS_NAME_FIELD_NUMBER: _ClassVar[int]
    CORPUS_SHA256_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_VOCABULARY_SHA256_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: CheckpointKind
    weights_sha256: str
    corpus_id: str
    corpus_name: str
    corpus_sha256: str
    step: int
    source_format: str
    source_vocabulary_sha256: str
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[CheckpointKind, str]] = ..., weights_sha256: _Optional[str] = ..., corpus_id: _Optional[str] = ..., corpus_name: _Optional[str] = ..., corpus_sha256: _Optional[str] = ..., step: _Optional[int] = ..., source_format: _Optional[str] = ..., source_vocabulary_sha256: _Optional[str] = ...) -> None: ...
