"""Protobuf messages to the client's typed results (shared by the sync and asyncio clients)."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from chargpt.v1 import common_pb2, inference_pb2, trainer_pb2
from chargpt.wire.checkpoint_kinds import kind_name
from chargpt.wire.lineage import lineage_values
from chargpt.wire.model_config import model_config_values
from chargpt_client import types as t


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """"JOB_STATE_RUNNING" -> "RUNNING"; unknown numbers come back as their number."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix)


def timestamp(ts: Timestamp) -> datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


def model_config(m: common_pb2.ModelConfig) -> t.ModelConfig:
    return t.ModelConfig(**model_config_values(m))


def device_report(r: trainer_pb2.GetDeviceInfoResponse) -> t.DeviceReport:
    d = r.device
    device = t.DeviceInfo(type=d.type, name=d.name, count=d.count, memory_bytes=d.memory_bytes,
                          bf16_supported=d.bf16_supported, cpu_cores=d.cpu_cores,
                          compute_capability=d.compute_capability)
    return t.DeviceReport(device=device, auto_model=model_config(r.auto_model),
                          auto_batch_size=r.auto_batch_size, presets=list(r.presets),
                          auto_preset=r.auto_preset, auto_max_steps=r.auto_max_steps,
                          gemm_gflops_fp32=r.gemm_gflops_fp32, gemm_gflops_bf16=r.gemm_gflops_bf16,
                          auto_precision=r.auto_precision,
                          candidate_tokens_per_second=dict(r.candidate_tokens_per_second),
                          calibrated_time=timestamp(r.calibrated_time),
                          calibration_seconds=r.calibration_seconds, calibration=calibration_state(r.calibration))


def calibration_state(value: int) -> str:
    """The CalibrationState's name in lower case ("" when unspecified)."""
    name = enum_name(common_pb2.CalibrationState, value, "CALIBRATION_STATE_")
    return "" if name == "UNSPECIFIED" else name.lower()


def corpus(c: trainer_pb2.Corpus) -> t.Corpus:
    return t.Corpus(corpus_id=c.corpus_id, name=c.name, description=c.description, size_bytes=c.size_bytes,
                    num_chars=c.num_chars, vocabulary=c.vocabulary, train_chars=c.train_chars,
                    val_chars=c.val_chars, builtin=c.builtin, created_time=timestamp(c.created_time),
                    tenant=c.tenant)


SPLIT_NAMES = {trainer_pb2.CORPUS_SPLIT_UNSPECIFIED: "all", trainer_pb2.CORPUS_SPLIT_TRAIN: "train",
               trainer_pb2.CORPUS_SPLIT_VALIDATION: "validation"}


def corpus_text(r: trainer_pb2.ReadCorpusResponse) -> t.CorpusText:
    return t.CorpusText(corpus_id=r.corpus_id, split=SPLIT_NAMES.get(r.split, str(r.split)), offset=r.offset,
                        split_chars=r.split_chars, text=r.text)


def upload_result(r: trainer_pb2.UploadCorpusResponse) -> t.UploadResult:
    return t.UploadResult(corpus=corpus(r.corpus), created=r.created)


def _set_fields(message: Message) -> dict[str, Any]:
    """The fields of a message that are set, enums by their short name (e.g. lr_schedule "COSINE")."""
    out: dict[str, Any] = {}
    for fd, value in message.ListFields():
        if fd.enum_type is not None:
            prefix = _enum_prefix(fd.enum_type.name)
            out[fd.name] = fd.enum_type.values_by_number[value].name.removeprefix(prefix)
        else:
            out[fd.name] = value
    return out


def _enum_prefix(enum_type_name: str) -> str:
    """LrSchedule -> "LR_SCHEDULE_"."""
    snake = "".join("_" + ch if ch.isupper() and i else ch for i, ch in enumerate(enum_type_name))
    return snake.upper() + "_"


def job(j: trainer_pb2.TrainingJob) -> t.TrainingJob:
    return t.TrainingJob(
        job_id=j.job_id, display_name=j.display_name, state=enum_name(trainer_pb2.JobState, j.state, "JOB_STATE_"),
        corpus_id=j.corpus_id, model=model_config(j.model), training=_set_fields(j.training),
        device_request=j.resources.device, num_processes=j.resources.num_processes, step=j.step,
        train_loss=j.train_loss, val_loss=j.val_loss, best_val_loss=j.best_val_loss,
        tokens_per_second=j.tokens_per_second, error=j.error, parameter_count=j.parameter_count,
        created_time=timestamp(j.created_time), started_time=timestamp(j.started_time),
        finished_time=timestamp(j.finished_time), device=j.device, num_nodes=j.resources.num_nodes or 1,
        parent=lineage(j.parent) if j.HasField("parent") else None, priority=j.priority, tenant=j.tenant)


def import_result(r: trainer_pb2.ImportModelResponse) -> t.ImportResult:
    return t.ImportResult(job=job(r.job), checkpoint=checkpoint(r.checkpoint))


def lineage(p: common_pb2.Lineage) -> t.Lineage:
    return t.Lineage(**lineage_values(p))


def checkpoint(c: trainer_pb2.Checkpoint) -> t.Checkpoint:
    return t.Checkpoint(job_id=c.job_id, kind=kind_name(c.kind), step=c.step, train_loss=c.train_loss,
                        val_loss=c.val_loss, weights_sha256=c.weights_sha256, size_bytes=c.size_bytes,
                        created_time=timestamp(c.created_time))


def job_event(r: trainer_pb2.WatchTrainingJobResponse) -> t.JobEvent:
    base: dict[str, Any] = {"sequence": r.sequence, "time": timestamp(r.time), "job_id": r.job_id}
    which = r.WhichOneof("event")
    if which == "state_changed":
        e = r.state_changed
        return t.StateChanged(**base, state=enum_name(trainer_pb2.JobState, e.state, "JOB_STATE_"),
                              message=e.message)
    if which == "progress":
        p = r.progress
        return t.Progress(**base, step=p.step, max_steps=p.max_steps if p.HasField("max_steps") else None,
                          loss=p.loss, learning_rate=p.learning_rate,
                          tokens_per_second=p.tokens_per_second, elapsed_seconds=p.elapsed_seconds,
                          eta_seconds=p.eta_seconds,
                          budget_seconds_left=p.budget_seconds_left if p.HasField("budget_seconds_left") else None)
    if which == "evaluation":
        v = r.evaluation
        return t.Evaluation(**base, step=v.step, train_loss=v.train_loss, val_loss=v.val_loss, is_best=v.is_best)
    if which == "sample":
        return t.Sample(**base, step=r.sample.step, text=r.sample.text)
    if which == "checkpoint_written":
        return t.CheckpointWritten(**base, checkpoint=checkpoint(r.checkpoint_written.checkpoint))
    return t.JobEvent(**base)  # an event kind newer than this client


def training_metadata(m: common_pb2.TrainingMetadata) -> t.TrainingMetadata:
    return t.TrainingMetadata(job_id=m.job_id, corpus_id=m.corpus_id, corpus_name=m.corpus_name,
                              corpus_sha256=m.corpus_sha256, step=m.step, train_loss=m.train_loss,
                              val_loss=m.val_loss, created_time=timestamp(m.created_time),
                              library_versions=dict(m.library_versions))


def model(m: inference_pb2.Model) -> t.Model:
    return t.Model(name=m.name, state=enum_name(inference_pb2.ModelState, m.state, "MODEL_STATE_"),
                   source=m.source, config=model_config(m.config), vocabulary=m.vocabulary,
                   parameter_count=m.parameter_count, device=m.device, dtype=m.dtype,
                   training=training_metadata(m.training), error=m.error, loaded_time=timestamp(m.loaded_time),
                   weights_sha256=m.weights_sha256, parent=lineage(m.parent) if m.HasField("parent") else None,
                   kv_cache_dtype=m.kv_cache_dtype, parallel_decode_from=m.parallel_decode_from,
                   narrow_decode_from=m.narrow_decode_from, split_decode_from=m.split_decode_from,
                   ggml_decode_up_to=m.ggml_decode_up_to, calibration=calibration_state(m.calibration))


def load_result(r: inference_pb2.LoadModelResponse) -> t.LoadResult:
    return t.LoadResult(model=model(r.model), loaded=r.loaded)


def float32_value(x: float) -> float:
    """A float32 field as the caller wrote it: the shortest decimal that reads back as the same float32
    (0.8 rather than 0.800000011920929, and 1e-38 rather than a rounding to 0)."""
    if x == 0 or not math.isfinite(x):
        return x
    packed = struct.pack("<f", x)
    for digits in range(1, 10):  # 9 significant digits identify every float32
        candidate = float(f"{x:.{digits}g}")
        try:
            if struct.pack("<f", candidate) == packed:
                return candidate
        except OverflowError:  # rounded past the largest float32
            continue
    return x


def summary(s: inference_pb2.GenerationSummary) -> t.GenerationSummary:
    return t.GenerationSummary(
        finish_reason=enum_name(inference_pb2.FinishReason, s.finish_reason, "FINISH_REASON_"),
        prompt_tokens=s.prompt_tokens, generated_tokens=s.generated_tokens, seed=s.seed,
        prompt_truncated=s.prompt_truncated, prompt_chars_dropped=s.prompt_chars_dropped,
        queue_seconds=s.queue_seconds, time_to_first_token_seconds=s.time_to_first_token_seconds,
        total_seconds=s.total_seconds, stop_sequence=s.stop_sequence, temperature=float32_value(s.temperature),
        top_k=s.top_k, top_p=float32_value(s.top_p), index=s.index)


def token_logprobs(entries: Iterable[inference_pb2.TokenLogprob]) -> list[t.TokenLogprob]:
    return [t.TokenLogprob(token=e.token, logprob=e.logprob, top=[(a.token, a.logprob) for a in e.top_logprobs])
            for e in entries]


def generation(r: inference_pb2.GenerateResponse) -> t.GenerationResult:
    choices = [t.GenerationChoice(index=c.index, text=c.text, summary=summary(c.summary),
                                  logprobs=token_logprobs(c.logprobs)) for c in r.choices]
    return t.GenerationResult(text=r.text, summary=summary(r.summary), logprobs=token_logprobs(r.logprobs),
                              choices=choices)


def score(r: inference_pb2.ScoreResponse) -> t.ScoreResult:
    return t.ScoreResult(mean_nll=r.mean_nll, bits_per_char=r.bits_per_char, perplexity=r.perplexity,
                         num_tokens=r.num_tokens, token_logprobs=list(r.token_logprobs))


def attention(r: inference_pb2.GetAttentionResponse) -> t.Attention:
    dtype = "float32" if r.weights.dtype == common_pb2.TENSOR_DTYPE_FLOAT32 else "float16"
    return t.Attention(tokens=list(r.tokens), layers=list(r.layers), heads=list(r.heads),
                       shape=tuple(r.weights.shape), dtype=dtype, data=bytes(r.weights.data))
