"""chargpt client library: typed Python clients for the trainer and inference services (no torch needed)."""

from chargpt import __version__
from chargpt_client.aio import AsyncClient, AsyncInferenceClient, AsyncTextStream, AsyncTrainerClient
from chargpt_client.errors import (
    AlreadyExists,
    ChargptClientError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from chargpt_client.export import ExportResult, export_model
from chargpt_client.options import ClientOptions, RetryPolicy, TlsOptions
from chargpt_client.sampling import SamplingOptions
from chargpt_client.sync import Client, InferenceClient, TextStream, TrainerClient
from chargpt_client.tokenizer import CharMapping
from chargpt_client.training import TrainingOptions
from chargpt_client.types import (
    Attention,
    Checkpoint,
    CheckpointWritten,
    Corpus,
    CorpusText,
    DeviceReport,
    Evaluation,
    GenerationResult,
    GenerationSummary,
    ImportResult,
    JobEvent,
    Model,
    ModelConfig,
    Progress,
    Sample,
    ScoreResult,
    StateChanged,
    TrainingJob,
)

__all__ = [
    "AlreadyExists", "AsyncClient", "AsyncInferenceClient", "AsyncTextStream", "AsyncTrainerClient", "Attention",
    "CharMapping", "ChargptClientError", "Checkpoint", "CheckpointWritten", "Client", "ClientOptions", "Corpus",
    "CorpusText", "DataLoss", "DeadlineExceeded", "DeviceReport", "Evaluation", "ExportResult", "FailedPrecondition",
    "GenerationResult", "GenerationSummary", "ImportResult", "InferenceClient", "Internal", "InvalidArgument",
    "JobEvent", "Model",
    "ModelConfig", "NotFound", "PermissionDenied", "Progress", "ResourceExhausted", "RetryPolicy", "Sample",
    "SamplingOptions",
    "ScoreResult", "StateChanged", "TextStream", "TlsOptions", "TrainerClient", "TrainingJob", "TrainingOptions",
    "Unauthenticated",
    "Unavailable", "Unimplemented", "__version__", "export_model",
]
