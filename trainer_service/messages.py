"""Store records, plans and engine events to v1 protos, and a CreateTrainingJobRequest to the job layer's JobRequest."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from chargpt.errors import InvalidArgumentError
from chargpt.v1 import common_pb2, trainer_pb2
from chargpt.wire.checkpoint_kinds import CHECKPOINT_KINDS, KIND_NAMES
from chargpt.wire.lineage import lineage_proto
from chargpt.wire.model_config import model_config_proto, model_config_values
from trainer_service.jobs.checkpoints import CheckpointInfo
from trainer_service.jobs.request import JobRequest, ParentRef
from trainer_service.store_records import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    CorpusRecord,
    EventRecord,
    JobRecord,
)
from trainer_service.training.api import TrainingPlan

STATE_TO_PROTO = {QUEUED: trainer_pb2.JOB_STATE_QUEUED, RUNNING: trainer_pb2.JOB_STATE_RUNNING,
                  SUCCEEDED: trainer_pb2.JOB_STATE_SUCCEEDED, FAILED: trainer_pb2.JOB_STATE_FAILED,
                  CANCELLED: trainer_pb2.JOB_STATE_CANCELLED}
PROTO_TO_STATE = {v: k for k, v in STATE_TO_PROTO.items()}
TRAINING_SPEC = trainer_pb2.TrainingSpec.DESCRIPTOR


def enum_choices(enum: EnumDescriptor) -> dict[int, str]:
    """A v1 enum's values by their plan name, e.g. PRECISION_FP32 -> "fp32"; UNSPECIFIED (0) is the default."""
    prefix = enum.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return {v.number: v.name.removeprefix(prefix).lower() for v in enum.values if v.number}


def training_fields(spec: trainer_pb2.TrainingSpec) -> dict[str, Any]:
    """The TrainingSpec fields a request set, as TrainingPlan values (unset fields take the plan's defaults)."""
    values: dict[str, Any] = {}
    for fd in spec.DESCRIPTOR.fields:
        if fd.enum_type is not None:
            number, choices = getattr(spec, fd.name), enum_choices(fd.enum_type)
            if number and number not in choices:
                raise InvalidArgumentError(f"training.{fd.name}", f"unknown value {number}")
            if number:
                values[fd.name] = choices[number]
        elif spec.HasField(fd.name):
            values[fd.name] = getattr(spec, fd.name)
    return values


def job_request(request: trainer_pb2.CreateTrainingJobRequest) -> JobRequest:
    """The request in the job layer's terms: only what the client set, nothing resolved yet."""
    r, model = request.resources, request.model
    which = model.WhichOneof("size")
    return JobRequest(
        corpus_id=request.corpus_id, display_name=request.display_name, training=training_fields(request.training),
        preset=model.preset if which == "preset" else "", custom=_custom_fields(model.custom) if which == "custom"
        else None, device=r.device, num_processes=r.num_processes if r.HasField("num_processes") else None,
        num_nodes=r.num_nodes if r.HasField("num_nodes") else None,
        init_from=_parent_ref(request.init_from) if request.HasField("init_from") else None,
        priority=request.priority)


def _custom_fields(custom: common_pb2.ModelConfig) -> dict[str, Any]:
    """A custom size's fields as written (dropout rounded back from float32); the corpus decides vocab_size."""
    values = model_config_values(custom)
    del values["vocab_size"]
    return values


def _parent_ref(spec: trainer_pb2.InitFrom) -> ParentRef:
    if spec.kind not in KIND_NAMES:
        raise InvalidArgumentError("init_from.kind", f"unknown checkpoint kind {spec.kind}")
    which = spec.WhichOneof("source")
    return ParentRef(job_id=spec.job_id if which == "job_id" else None, path=spec.path if which == "path" else None,
                     kind=KIND_NAMES[spec.kind])  # type: ignore[arg-type]


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _loss(value: float | None) -> float:
    return math.nan if value is None else float(value)


def corpus_proto(record: CorpusRecord) -> trainer_pb2.Corpus:
    return trainer_pb2.Corpus(corpus_id=record.corpus_id, name=record.name, description=record.description,
                              size_bytes=record.size_bytes, num_chars=record.num_chars,
                              vocabulary=record.vocabulary, train_chars=record.train_chars,
                              val_chars=record.val_chars, builtin=record.builtin,
                              created_time=timestamp(record.created), tenant=record.owner)


def training_proto(plan: TrainingPlan) -> trainer_pb2.TrainingSpec:
    """Every TrainingSpec field from the plan (each one is set: the job shows its resolved values)."""
    spec = trainer_pb2.TrainingSpec()
    for fd in TRAINING_SPEC.fields:
        value = getattr(plan, fd.name)
        if value is None:  # an optional field the job does not use (max_seconds)
            continue
        if fd.enum_type is not None:
            value = {name: number for number, name in enum_choices(fd.enum_type).items()}[value]
        setattr(spec, fd.name, value)
    return spec


def job_proto(job: JobRecord, plan: TrainingPlan) -> trainer_pb2.TrainingJob:
    return trainer_pb2.TrainingJob(
        job_id=job.job_id, display_name=job.display_name, state=STATE_TO_PROTO[job.state],
        corpus_id=job.corpus_id, model=model_config_proto(plan.model), training=training_proto(plan),
        resources=trainer_pb2.ResourceSpec(device=plan.device, num_processes=plan.num_processes,
                                          num_nodes=plan.num_nodes),
        step=job.step, train_loss=_loss(job.train_loss), val_loss=_loss(job.val_loss),
        best_val_loss=_loss(job.best_val_loss), tokens_per_second=job.tokens_per_second, error=job.error,
        parameter_count=job.parameter_count, created_time=timestamp(job.created),
        started_time=timestamp(job.started), finished_time=timestamp(job.finished), device=plan.device,
        parent=None if plan.init_from is None else lineage_proto(plan.init_from.lineage), priority=job.priority,
        tenant=job.owner)


def checkpoint_proto(job_id: str, info: CheckpointInfo) -> trainer_pb2.Checkpoint:
    t = info.manifest.training
    return trainer_pb2.Checkpoint(job_id=job_id, kind=CHECKPOINT_KINDS[info.kind], step=t.step,
                                  train_loss=_loss(t.train_loss), val_loss=_loss(t.val_loss),
                                  weights_sha256=info.manifest.weights.sha256, size_bytes=info.size_bytes,
                                  created_time=timestamp(info.created))


def event_proto(event: EventRecord) -> trainer_pb2.WatchTrainingJobResponse:
    p = event.payload
    response = trainer_pb2.WatchTrainingJobResponse(sequence=event.seq, time=timestamp(event.time),
                                                    job_id=event.job_id)
    if event.kind == "state":
        response.state_changed.CopyFrom(trainer_pb2.StateChangedEvent(state=STATE_TO_PROTO[p["state"]],
                                                                      message=p.get("message", "")))
    elif event.kind == "notice":  # the engine's note on a running job (e.g. a budget too small to learn in)
        response.state_changed.CopyFrom(trainer_pb2.StateChangedEvent(state=STATE_TO_PROTO[RUNNING],
                                                                      message=p["message"]))
    elif event.kind == "progress":
        response.progress.CopyFrom(trainer_pb2.ProgressEvent(
            step=p["step"], max_steps=p["max_steps"], loss=p["loss"], learning_rate=p["learning_rate"],
            tokens_per_second=p["tokens_per_second"], elapsed_seconds=p["elapsed_seconds"],
            eta_seconds=p["eta_seconds"], budget_seconds_left=p.get("budget_seconds_left")))
    elif event.kind == "evaluation":
        response.evaluation.CopyFrom(trainer_pb2.EvaluationEvent(step=p["step"], train_loss=p["train_loss"],
                                                                 val_loss=p["val_loss"], is_best=p["is_best"]))
    elif event.kind == "sample":
        response.sample.CopyFrom(trainer_pb2.SampleEvent(step=p["step"], text=p["text"]))
    elif event.kind == "checkpoint":
        response.checkpoint_written.CopyFrom(trainer_pb2.CheckpointWrittenEvent(checkpoint=trainer_pb2.Checkpoint(
            job_id=event.job_id, kind=CHECKPOINT_KINDS[p["checkpoint_kind"]], step=p["step"],
            train_loss=_loss(p.get("train_loss")), val_loss=_loss(p.get("val_loss")),
            weights_sha256=p["weights_sha256"], size_bytes=p["size_bytes"], created_time=timestamp(event.time))))
    return response
