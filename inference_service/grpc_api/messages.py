"""Proto conversion: GenerateRequest -> SamplingParams, domain results -> messages."""

from __future__ import annotations

import math

from chargpt.proto_fields import given_fields
from chargpt.sampling_params import SamplingParams, resolve_sampling
from chargpt.v1 import common_pb2, inference_pb2
from chargpt.wire.lineage import lineage_proto
from chargpt.wire.model_config import model_config_proto
from inference_service.engine.request import Finish, Summary
from inference_service.logprobs import TokenLogprob
from inference_service.ownership import name_for
from inference_service.registry import ModelEntry, State

FINISH = {Finish.LENGTH: inference_pb2.FINISH_REASON_LENGTH, Finish.STOP: inference_pb2.FINISH_REASON_STOP,
          Finish.CANCELLED: inference_pb2.FINISH_REASON_CANCELLED,
          Finish.DEADLINE: inference_pb2.FINISH_REASON_CANCELLED}
STATES = {State.LOADING: inference_pb2.MODEL_STATE_LOADING, State.READY: inference_pb2.MODEL_STATE_READY,
          State.FAILED: inference_pb2.MODEL_STATE_FAILED, State.UNLOADING: inference_pb2.MODEL_STATE_UNLOADING}


def sampling_params(request: inference_pb2.GenerateRequest) -> SamplingParams:
    """The request's sampling fields, validated: every SamplingParams field the sender set, by its own name (a new
    proto field needs no line here); INVALID_ARGUMENT names a bad one."""
    return resolve_sampling(**given_fields(request, SamplingParams.model_fields))


def logprobs_to_proto(entries: list[TokenLogprob]) -> list[inference_pb2.TokenLogprob]:
    return [inference_pb2.TokenLogprob(token=e.token, logprob=e.logprob,
                                       top_logprobs=[inference_pb2.TopLogprob(token=t, logprob=v) for t, v in e.top])
            for e in entries]


def summary_to_proto(summary: Summary) -> inference_pb2.GenerationSummary:
    p = summary.params
    return inference_pb2.GenerationSummary(
        finish_reason=FINISH.get(summary.finish, inference_pb2.FINISH_REASON_UNSPECIFIED),
        prompt_tokens=summary.prompt_tokens, generated_tokens=summary.generated_tokens, seed=summary.seed,
        prompt_truncated=summary.prompt_chars_dropped > 0, prompt_chars_dropped=summary.prompt_chars_dropped,
        queue_seconds=summary.queue_seconds, time_to_first_token_seconds=summary.ttft_seconds,
        total_seconds=summary.total_seconds, stop_sequence=summary.stop_sequence,
        temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, index=summary.index)


def model_to_proto(entry: ModelEntry) -> inference_pb2.Model:
    out = inference_pb2.Model(name=name_for(entry), state=STATES[entry.state], source=entry.source,
                              device=entry.device, dtype=entry.dtype, error=entry.error,
                              calibration=entry.calibration.proto())
    if entry.engine is not None:  # how it is served (calibration.py's plan, or the settings that override it)
        out.kv_cache_dtype = str(entry.engine.cache.k.dtype).split(".")[-1]
        out.parallel_decode_from = entry.engine.policy.reported_parallel_from
        out.narrow_decode_from = entry.engine.policy.narrow_from
        out.split_decode_from = entry.engine.policy.reported_split_from
        out.ggml_decode_up_to = entry.engine.policy.ggml_up_to
    if entry.loaded_time is not None:
        out.loaded_time.FromDatetime(entry.loaded_time)
    if entry.checkpoint is None:
        return out
    manifest, config = entry.checkpoint.manifest, entry.checkpoint.manifest.model
    out.config.CopyFrom(model_config_proto(config))
    out.vocabulary = manifest.vocabulary
    out.parameter_count = entry.checkpoint.model.num_parameters()
    out.weights_sha256 = manifest.weights.sha256
    t = manifest.training
    out.training.CopyFrom(common_pb2.TrainingMetadata(
        job_id=t.job_id, corpus_id=t.corpus_id, corpus_name=t.corpus_name, corpus_sha256=t.corpus_sha256,
        step=t.step, train_loss=t.train_loss if t.train_loss is not None else math.nan,
        val_loss=t.val_loss if t.val_loss is not None else math.nan, library_versions=t.library_versions))
    out.training.created_time.FromDatetime(t.created_time)
    if t.parent is not None:
        out.parent.CopyFrom(lineage_proto(t.parent))
    return out
