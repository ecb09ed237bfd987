"""One schema for sampling: every GenerateRequest sampling field is a SamplingParams field (and back), with the
same names in the proto, the client's SamplingOptions, the CLI and the OpenAI schema; and the model's bounds."""

from __future__ import annotations

import argparse
import math
from typing import Any

import pytest
from chargpt_client.cli import build_parser
from chargpt_client.ops import generate_request
from chargpt_client.sampling import SamplingOptions

from chargpt.errors import InvalidArgumentError
from chargpt.proto_fields import enum_names
from chargpt.sampling_params import SAMPLING_PRESETS, SamplingParams, SamplingPreset, resolve_sampling
from chargpt.v1 import inference_pb2
from inference_service.grpc_api.messages import sampling_params
from inference_service.openai_api.schemas import OPENAI_NAMES, CompletionRequest

REQUEST = inference_pb2.GenerateRequest.DESCRIPTOR
NOT_SAMPLING = {"model", "prompt", "priority"}  # what to continue, with which model; when it is admitted
NO_PRESENCE = {"logprobs"}  # 0, its default, means none: an explicit 0 and "unset" are the same request
NOT_FLAGS = {"n", "logit_bias"}  # `chargpt generate` prints one sample; a mapping is no flag
SAMPLING_FIELDS = sorted({f.name for f in REQUEST.fields} - NOT_SAMPLING)


def _generate_flags() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {option: action for action in sub.choices["generate"]._actions for option in action.option_strings}


def test_no_sampling_field_exists_only_on_one_side() -> None:
    assert set(SamplingParams.model_fields) == set(SAMPLING_FIELDS)
    assert set(SamplingOptions.model_fields) == set(SAMPLING_FIELDS)


@pytest.mark.parametrize("name", SAMPLING_FIELDS)
def test_every_generate_request_field_is_in_the_model_the_client_the_cli_and_http(name: str) -> None:
    fd = REQUEST.fields_by_name[name]
    assert name in SamplingParams.model_fields, f"SamplingParams lacks {name}"
    assert name in SamplingOptions.model_fields, f"chargpt_client SamplingOptions lacks {name}"
    assert OPENAI_NAMES.get(name, name) in CompletionRequest.model_fields, f"the OpenAI schema lacks {name}"
    assert SamplingParams.model_fields[name].description, f"SamplingParams.{name} has no doc"
    if name not in NOT_FLAGS:
        assert "--" + name.replace("_", "-") in _generate_flags(), f"`chargpt generate` lacks --{name}"
    if fd.enum_type is not None:  # the same names everywhere: proto enum, model, CLI choices
        assert set(enum_names(fd.enum_type).values()) == {p.value for p in SamplingPreset}
        assert set(_generate_flags()["--preset"].choices or ()) == {p.value for p in SamplingPreset}
    elif not fd.is_repeated and name not in NO_PRESENCE:
        assert fd.has_presence, f"GenerateRequest.{name} must be optional so that an explicit 0 is not 'unset'"


EVERY_FIELD: dict[str, Any] = {
    "max_new_tokens": 7, "temperature": 0.0, "top_k": 0, "top_p": 0.5, "min_p": 0.25, "repetition_penalty": 1.5,
    "frequency_penalty": -0.5, "presence_penalty": 0.0, "seed": 0, "stop": ("\n\n", "x"), "n": 3, "logprobs": 2,
    "logit_bias": {"a": -100.0, "b": 2.0}}


# A request has at most one constraint: each is sent on top of every other field in turn.
CONSTRAINTS: dict[str, Any] = {"regex": "[a-z]+", "choices": ("yes", "no"), "json_schema": '{"type": "object"}'}


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_client_options_reach_the_server_unchanged(constraint: str) -> None:
    every_field = {**EVERY_FIELD, constraint: CONSTRAINTS[constraint]}
    assert set(EVERY_FIELD) | set(CONSTRAINTS) == set(SAMPLING_FIELDS) - {"preset"}  # every field, zeros included
    request = generate_request("m", "hi", options=SamplingOptions(**every_field))
    assert sampling_params(request) == SamplingParams(**every_field)
    keywords = generate_request("m", "hi", **every_field)
    assert keywords == request


def test_a_preset_fills_what_is_not_given_and_is_spelled_once() -> None:
    assert {p.value for p in SAMPLING_PRESETS} == {"focused", "balanced", "creative"}
    request = generate_request("m", preset="Balanced", top_k=3)
    assert request.preset == inference_pb2.SAMPLING_PRESET_BALANCED
    assert sampling_params(request) == SamplingParams(temperature=0.8, top_k=3)
    assert resolve_sampling("creative") == SAMPLING_PRESETS[SamplingPreset.CREATIVE]
    with pytest.raises(InvalidArgumentError, match="preset") as info:
        sampling_params(inference_pb2.GenerateRequest(preset=99))  # type: ignore[arg-type]
    assert info.value.field == "preset"


def test_openai_names_and_types_become_the_same_params() -> None:
    body = CompletionRequest(model="m", max_tokens=5, stop="\n", logit_bias={"1": 3.0}, temperature=0.5, seed=1)
    assert body.sampling_params("ab") == SamplingParams(max_new_tokens=5, stop=("\n",), logit_bias={"b": 3.0},
                                                         temperature=0.5, seed=1)
    assert CompletionRequest(model="m").sampling_params("ab").max_new_tokens == 16  # OpenAI's default


@pytest.mark.parametrize(("field", "value"), [
    ("max_new_tokens", 0), ("max_new_tokens", -1), ("max_new_tokens", 2**31),
    ("temperature", -0.1), ("temperature", 100.5), ("temperature", math.nan), ("temperature", math.inf),
    ("top_k", -1), ("top_p", 0.0), ("top_p", 1.01), ("top_p", math.nan), ("min_p", -0.1), ("min_p", 1.5),
    ("repetition_penalty", 0.0), ("repetition_penalty", 101.0), ("frequency_penalty", 2.5),
    ("frequency_penalty", -2.5), ("presence_penalty", 3.0), ("seed", -1), ("seed", 2**64), ("n", 0), ("n", 17),
    ("logprobs", -1), ("logprobs", 21), ("stop", [""]), ("stop", ["x" * 65]), ("stop", ["a"] * 17),
    ("logit_bias", {"ab": 1.0}), ("logit_bias", {"a": 100.5}), ("logit_bias", {"a": math.nan}),
    ("logit_bias", {chr(0x100 + i): 0.0 for i in range(257)}), ("preset", "wild"),
])
def test_out_of_bounds_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        resolve_sampling(**{field: value})
    assert info.value.field == field and str(info.value).startswith(f"{field}:")


@pytest.mark.parametrize(("field", "value"), [
    ("max_new_tokens", 1), ("max_new_tokens", 2**31 - 1), ("temperature", 0.0), ("temperature", 100.0),
    ("top_k", 2**31 - 1), ("top_p", 1e-30), ("top_p", 1.0), ("min_p", 0.0), ("min_p", 1.0),
    ("repetition_penalty", 1e-6), ("repetition_penalty", 100.0), ("frequency_penalty", -2.0),
    ("presence_penalty", 2.0), ("seed", 0), ("seed", 2**64 - 1), ("n", 1), ("n", 16), ("logprobs", 0),
    ("logprobs", 20), ("stop", ["x" * 64] * 16), ("logit_bias", {"a": -100.0, "b": 100.0}),
])
def test_values_at_the_bounds_are_accepted(field: str, value: object) -> None:
    assert resolve_sampling(**{field: value}) is not None


def test_defaults_change_nothing() -> None:
    p = SamplingParams()
    assert (p.max_new_tokens, p.temperature, p.top_k, p.top_p, p.min_p, p.n, p.logprobs) == (256, 1.0, 0, 1.0, 0.0,
                                                                                             1, 0)
    assert (p.repetition_penalty, p.frequency_penalty, p.presence_penalty) == (1.0, 0.0, 0.0)
    assert (p.seed, p.stop, p.logit_bias, p.preset) == (None, (), {}, None) and not p.greedy
