"""Every RPC as data: the request built from typed arguments, the converter, and whether retrying is safe.

The sync and asyncio clients share these; only their call layer differs. Retry policy (on UNAVAILABLE only):
reads (Get/List/Read/DeviceInfo/Score/GetAttention/Generate), LoadModel (idempotent for the same name and source),
CancelTrainingJob (idempotent by contract) and uploads (content-addressed: a repeat returns the stored corpus)
are retried. CreateTrainingJob, ResumeTrainingJob, DeleteCorpus and UnloadModel are not: a first attempt that
reached the server would make a retry create a second job or fail confusingly. Streams are retried only before
their first message, except WatchTrainingJob, which resumes after the last event it delivered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from chargpt.proto_fields import set_fields
from chargpt.v1 import common_pb2, inference_pb2, trainer_pb2
from chargpt.wire.checkpoint_kinds import CHECKPOINT_KINDS
from chargpt.wire.model_config import model_config_proto
from chargpt_client import from_proto
from chargpt_client import types as t
from chargpt_client.deprecation import deprecated
from chargpt_client.sampling import SamplingOptions
from chargpt_client.training import TrainingOptions, options_from_keywords

T = TypeVar("T")
V = TypeVar("V")

JOB_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class Unary(Generic[T]):
    """One unary call: stub method name, request, response converter, retry safety."""

    method: str
    request: Message
    convert: Callable[[Any], T]
    idempotent: bool


def _lookup(table: dict[str, V], value: str, what: str) -> V:
    try:
        return table[value.lower()]
    except KeyError:
        raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(k for k in table if k)}") from None


# ---- trainer ----

def get_device_info(recalibrate: bool = False) -> Unary[t.DeviceReport]:
    return Unary("GetDeviceInfo", trainer_pb2.GetDeviceInfoRequest(recalibrate=recalibrate), from_proto.device_report,
                 True)


def list_corpora() -> Unary[list[t.Corpus]]:
    return Unary("ListCorpora", trainer_pb2.ListCorporaRequest(),
                 lambda r: [from_proto.corpus(c) for c in r.corpora], True)


def get_corpus(corpus_id: str) -> Unary[t.Corpus]:
    return Unary("GetCorpus", trainer_pb2.GetCorpusRequest(corpus_id=corpus_id),
                 lambda r: from_proto.corpus(r.corpus), True)


CORPUS_SPLITS: dict[str, Any] = {name: number for number, name in from_proto.SPLIT_NAMES.items()}
MAX_READ_CHARS = 262_144  # the server's limit per ReadCorpus call


def read_corpus(corpus_id: str, split: str = "all", offset: int = 0,
                length: int = MAX_READ_CHARS) -> Unary[t.CorpusText]:
    request = trainer_pb2.ReadCorpusRequest(corpus_id=corpus_id, split=_lookup(CORPUS_SPLITS, split, "split"),
                                            offset=offset, length=length)
    return Unary("ReadCorpus", request, from_proto.corpus_text, True)


def delete_corpus(corpus_id: str) -> Unary[None]:
    return Unary("DeleteCorpus", trainer_pb2.DeleteCorpusRequest(corpus_id=corpus_id), lambda r: None, False)


def training_spec(options: TrainingOptions | None) -> trainer_pb2.TrainingSpec:
    """The TrainingSpec of the options that are set; enums by short name, e.g. precision="fp32"."""
    spec = trainer_pb2.TrainingSpec()
    for name, value in (options.given() if options is not None else {}).items():
        fd = spec.DESCRIPTOR.fields_by_name[name]
        if fd.enum_type is not None:
            prefix = fd.enum_type.values_by_number[0].name.removesuffix("UNSPECIFIED")
            number = fd.enum_type.values_by_name.get(prefix + str(value).upper())
            if number is None or number.number == 0:
                raise ValueError(f"unknown {name} {value!r}")
            value = number.number
        setattr(spec, name, value)
    return spec


def create_training_job(corpus_id: str, *, preset: str | None = None, model: t.ModelConfig | None = None,
                        training: TrainingOptions | None = None, display_name: str = "", device: str = "",
                        num_processes: int | None = None, num_nodes: int | None = None,
                        init_from: str | None = None, priority: int = 0,
                        **training_keywords: Any) -> Unary[t.TrainingJob]:
    """num_processes: DDP ranks per node; num_nodes: nodes (needs the trainer's slurm or kubernetes executor);
    init_from: "JOB[:best|latest]" or a checkpoint directory on the trainer to fine-tune; priority: order within
    the caller's tenant's queue, lower first (default 0).

    Deprecated since 0.2.0 (0.1's forms, removed in 0.3.0): training fields as keywords (max_steps=...), and
    num_processes=0 for one process (the trainer now refuses an explicit 0).
    """
    training = options_from_keywords(training, training_keywords)
    if num_processes == 0:
        deprecated("create_job(num_processes=0)", "num_processes=None (the default: one process)", since="0.2.0")
        num_processes = None
    spec = trainer_pb2.ModelSpec()
    if model is not None:
        spec.custom.CopyFrom(model_config_proto(model))
        spec.custom.ClearField("vocab_size")  # the trainer sets it from the corpus
    elif preset:
        spec.preset = preset
    request = trainer_pb2.CreateTrainingJobRequest(
        corpus_id=corpus_id, display_name=display_name, model=spec, training=training_spec(training),
        resources=trainer_pb2.ResourceSpec(device=device, num_processes=num_processes, num_nodes=num_nodes),
        init_from=None if init_from is None else init_from_spec(init_from), priority=priority)
    return Unary("CreateTrainingJob", request, lambda r: from_proto.job(r.job), False)


def init_from_spec(reference: str) -> trainer_pb2.InitFrom:
    """JOB, JOB:best or JOB:latest (a trainer job's checkpoint), or a checkpoint directory on the trainer (any
    reference with a "/": relative to the trainer's data directory, or absolute inside it)."""
    if "/" in reference:
        return trainer_pb2.InitFrom(path=reference)
    job_id, _, kind = reference.partition(":")
    if kind.lower() not in CHECKPOINT_KINDS:
        raise ValueError(f"init_from: {reference!r}: expected JOB, JOB:best, JOB:latest or a path")
    return trainer_pb2.InitFrom(job_id=job_id, kind=CHECKPOINT_KINDS[kind.lower()])


def get_training_job(job_id: str) -> Unary[t.TrainingJob]:
    return Unary("GetTrainingJob", trainer_pb2.GetTrainingJobRequest(job_id=job_id),
                 lambda r: from_proto.job(r.job), True)


def list_training_jobs_page(states: Iterable[str] = (), page_size: int = 0,
                            page_token: str = "") -> Unary[tuple[list[t.TrainingJob], str]]:
    numbers = []
    for state in states:
        if state.upper() not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}; choose from {', '.join(JOB_STATES)}")
        numbers.append(trainer_pb2.JobState.Value("JOB_STATE_" + state.upper()))
    request = trainer_pb2.ListTrainingJobsRequest(states=numbers, page_size=page_size, page_token=page_token)
    return Unary("ListTrainingJobs", request,
                 lambda r: ([from_proto.job(j) for j in r.jobs], r.next_page_token), True)


def cancel_training_job(job_id: str) -> Unary[t.TrainingJob]:
    return Unary("CancelTrainingJob", trainer_pb2.CancelTrainingJobRequest(job_id=job_id),
                 lambda r: from_proto.job(r.job), True)


def resume_training_job(job_id: str) -> Unary[t.TrainingJob]:
    return Unary("ResumeTrainingJob", trainer_pb2.ResumeTrainingJobRequest(job_id=job_id),
                 lambda r: from_proto.job(r.job), False)


def list_checkpoints(job_id: str) -> Unary[list[t.Checkpoint]]:
    return Unary("ListCheckpoints", trainer_pb2.ListCheckpointsRequest(job_id=job_id),
                 lambda r: [from_proto.checkpoint(c) for c in r.checkpoints], True)


def watch_request(job_id: str, after_sequence: int) -> trainer_pb2.WatchTrainingJobRequest:
    return trainer_pb2.WatchTrainingJobRequest(job_id=job_id, after_sequence=after_sequence)


def download_request(job_id: str, kind: str, chunk_size: int) -> trainer_pb2.DownloadCheckpointRequest:
    return trainer_pb2.DownloadCheckpointRequest(job_id=job_id, kind=_lookup(CHECKPOINT_KINDS, kind, "kind"),
                                                 chunk_size=chunk_size)


# ---- inference ----

def load_model(name: str, *, checkpoint_path: str | None = None, job_id: str | None = None, kind: str = "",
               device: str = "", dtype: str = "") -> Unary[t.LoadResult]:
    if (checkpoint_path is None) == (job_id is None):
        raise ValueError("give exactly one of checkpoint_path or job_id")
    request = inference_pb2.LoadModelRequest(name=name, device=device, dtype=dtype)
    if checkpoint_path is not None:
        request.checkpoint_path = checkpoint_path
    else:
        request.trainer_checkpoint.CopyFrom(inference_pb2.TrainerCheckpointRef(
            job_id=job_id or "", kind=_lookup(CHECKPOINT_KINDS, kind, "kind")))
    return Unary("LoadModel", request, from_proto.load_result, True)


def unload_model(name: str) -> Unary[None]:
    return Unary("UnloadModel", inference_pb2.UnloadModelRequest(name=name), lambda r: None, False)


def list_models() -> Unary[list[t.Model]]:
    return Unary("ListModels", inference_pb2.ListModelsRequest(), lambda r: [from_proto.model(m) for m in r.models],
                 True)


def get_model(name: str) -> Unary[t.Model]:
    return Unary("GetModel", inference_pb2.GetModelRequest(name=name), lambda r: from_proto.model(r.model), True)


def generate_request(model: str, prompt: str = "", *, max_new_tokens: int | None = None,
                     preset: str | None = None, temperature: float | None = None, top_k: int | None = None,
                     top_p: float | None = None, seed: int | None = None, stop: Iterable[str] = (),
                     logprobs: int | None = None, n: int | None = None, repetition_penalty: float | None = None,
                     frequency_penalty: float | None = None, presence_penalty: float | None = None,
                     min_p: float | None = None, logit_bias: Mapping[str, float] | None = None,
                     regex: str | None = None, choices: Iterable[str] | None = None,
                     json_schema: str | Mapping[str, Any] | None = None,
                     options: SamplingOptions | None = None, priority: int = 0) -> inference_pb2.GenerateRequest:
    """Only the fields the caller gave are set: the server tells an explicit 0 from "unset" (its default).
    The keywords are SamplingOptions' fields (see its docs), and override `options` where both are given.
    `priority`: admission order while requests wait for the model (vLLM's: lower first, default 0)."""
    keywords = {name: value for name, value in locals().items() if name in SamplingOptions.model_fields}
    given = {**(options.given() if options is not None else {}), **SamplingOptions.of(keywords).given()}
    request = inference_pb2.GenerateRequest(model=model, prompt=prompt, priority=priority)
    set_fields(request, given)
    return request


def generate(request: inference_pb2.GenerateRequest) -> Unary[t.GenerationResult]:
    return Unary("Generate", request, from_proto.generation, True)


def score(model: str, text: str, *, stride: int | None = None,
          include_token_logprobs: bool = False) -> Unary[t.ScoreResult]:
    request = inference_pb2.ScoreRequest(model=model, text=text, include_token_logprobs=include_token_logprobs)
    if stride is not None:  # unset: the server's default (block_size); an explicit 0 is refused
        request.stride = stride
    return Unary("Score", request, from_proto.score, True)


def get_attention(model: str, text: str, *, layers: Iterable[int] = (), heads: Iterable[int] = (),
                  dtype: str = "float16") -> Unary[t.Attention]:
    dtypes = {"float16": common_pb2.TENSOR_DTYPE_FLOAT16, "float32": common_pb2.TENSOR_DTYPE_FLOAT32}
    request = inference_pb2.GetAttentionRequest(model=model, text=text, layers=list(layers), heads=list(heads),
                                                dtype=_lookup(dtypes, dtype, "dtype"))
    return Unary("GetAttention", request, from_proto.attention, True)
