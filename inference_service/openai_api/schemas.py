"""Request bodies of the OpenAI-compatible API (pydantic); the completion's sampling fields come from SamplingParams."""

from __future__ import annotations

import math
import re
import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from chargpt.errors import InvalidArgumentError
from chargpt.sampling_params import CONSTRAINT_FIELDS, SamplingParams, optional_fields, resolve_sampling

MAX_PROMPTS = 16
# Where OpenAI's completions API differs from SamplingParams: its names, its types (logit_bias keyed by token id,
# stop as a string or a list) and its defaults (16 tokens).
OPENAI_NAMES = {"max_new_tokens": "max_tokens"}
OPENAI_TYPES: dict[str, Any] = {"stop": str | list[str], "logit_bias": dict[str, float],
                                "json_schema": str | dict[str, Any]}
OPENAI_DEFAULTS = {"max_new_tokens": 16}
SAMPLING_NAMES = {OPENAI_NAMES.get(name, name): name for name in SamplingParams.model_fields}  # OpenAI -> ours
FLOATS = {name for name, info in SamplingParams.model_fields.items() if info.annotation is float}
FLOAT32_MAX = 3.4028234663852886e38
TOKEN_ID = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() also accepts "²", which int() refuses


class StreamOptions(BaseModel):
    """OpenAI's stream_options (null or absent fields: false), plus vLLM's continuous_usage_stats."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None  # a last chunk, `choices: []`, carries the request's usage
    continuous_usage_stats: bool | None = None  # vLLM: with include_usage, every chunk carries the usage so far


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` (its StructuredOutputsParams): the constraints chargpt supports. Its other keys
    (grammar, json_object, structural_tag, whitespace_pattern...) are refused by name, not ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    regex: str | None = None
    choice: list[str] | None = None
    json_schema: str | dict[str, Any] | None = Field(default=None, alias="json")


class JsonSchemaFormat(BaseModel):
    """OpenAI's response_format.json_schema: a named schema (`strict` is accepted: chargpt is always strict)."""

    name: str = ""
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: "text" (free) or "json_schema"; "json_object" has no schema to hold to."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


_CompletionSampling = create_model("_CompletionSampling", __config__=ConfigDict(extra="forbid"),
                                   **optional_fields(OPENAI_NAMES, OPENAI_TYPES, OPENAI_DEFAULTS))


class CompletionRequest(_CompletionSampling):  # type: ignore[misc,valid-type]  # fields built at import time
    """POST /v1/completions: OpenAI's fields plus chargpt's extras (every SamplingParams field, e.g. top_k, min_p,
    repetition_penalty, preset). Unknown fields are rejected rather than silently ignored."""

    # null means absent for every OpenAI field, as in the reference.
    model: str
    prompt: str | list[str] | None = ""
    echo: bool | None = None
    best_of: int | None = None  # only best_of == n: each sample is returned, none is picked
    suffix: str | None = None  # only "": a left-to-right model cannot fill in before a suffix
    user: str | None = None  # accepted for compatibility; chargpt does not use it
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # Constraints under vLLM's names: today's `structured_outputs`, the guided_* fields it had until v0.12, and
    # OpenAI's response_format (see constraint_values); chargpt's own regex/choices/json_schema work too.
    structured_outputs: StructuredOutputs | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_json: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    # vLLM's extension: admission order while requests wait for a batch slot, lower first (null: 0).
    priority: int | None = Field(default=None, ge=-(2**31), lt=2**31)

    def prompts(self) -> list[str]:
        prompt = "" if self.prompt is None else self.prompt
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise InvalidArgumentError("prompt", f"give 1..{MAX_PROMPTS} prompts, got {len(prompts)}")
        return prompts

    def sampling_values(self) -> dict[str, Any]:
        """The sampling fields given (not None; OpenAI's default where it has one), by SamplingParams name, in
        OpenAI's types."""
        values = {name: getattr(self, openai_name) for openai_name, name in SAMPLING_NAMES.items()}
        given = {name: OPENAI_DEFAULTS.get(name) if value is None else value for name, value in values.items()}
        return {name: value for name, value in given.items() if value is not None}

    def sampling_params(self, vocabulary: str) -> SamplingParams:
        """The body's SamplingParams (validated by the same model as gRPC requests); `vocabulary` maps
        logit_bias token ids to the model's characters."""
        self._check_unsupported()
        values = self.sampling_values()
        if self.logprobs is not None:
            # OpenAI's logprobs: 0 is the sampled character's log-probability alone, where the domain's 0 is no
            # log-probabilities: ask for one alternative, and completions.py reports only what was asked.
            values["logprobs"] = self.logprobs or 1
        if isinstance(values.get("stop"), str):
            values["stop"] = [values["stop"]]
        if "logit_bias" in values:
            bias = values["logit_bias"].items()
            values["logit_bias"] = {_bias_character(k, vocabulary): _float32(v) for k, v in bias}
        return resolve_sampling(**{k: _float32(v) if k in FLOATS else v for k, v in values.items()},
                                **self.constraint_values())

    def constraint_values(self) -> dict[str, Any]:
        """The constraint given under one of vLLM's or OpenAI's names, by SamplingParams name (at most one: a
        second, in any spelling, is refused naming it)."""
        so = self.structured_outputs or StructuredOutputs()
        schema = self.response_format.json_schema if self.response_format is not None else None
        if self.response_format is not None and self.response_format.type == "json_schema" and schema is None:
            raise InvalidArgumentError("response_format", "type json_schema needs json_schema.schema")
        spellings = [("structured_outputs.regex", "regex", so.regex), ("guided_regex", "regex", self.guided_regex),
                     ("structured_outputs.choice", "choices", so.choice),
                     ("guided_choice", "choices", self.guided_choice),
                     ("structured_outputs.json", "json_schema", so.json_schema),
                     ("guided_json", "json_schema", self.guided_json),
                     ("response_format", "json_schema", schema.schema_ if schema is not None else None)]
        given = [(name, field, value) for name, field, value in spellings if value is not None]
        given += [(name, name, value) for name, value in self.sampling_values().items() if name in CONSTRAINT_FIELDS]
        for name, field, value in given:  # on gRPC an empty repeated field is "not given": here it is a mistake
            if field == "choices" and not value:
                raise InvalidArgumentError(name, "give at least one choice (none would mean no constraint)")
        if len(given) > 1:
            raise InvalidArgumentError(given[1][0], f"give one constraint (got {given[0][0]} too)")
        return {field: value for _, field, value in given if field not in self.sampling_values()}

    def _check_unsupported(self) -> None:
        """The reference's parameters that chargpt refuses (400 naming them) rather than silently ignores."""
        if self.echo and self.logprobs is not None:
            raise InvalidArgumentError("echo", "echo with logprobs is not supported; use /v1/score for the "
                                       "prompt's log-probabilities")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise InvalidArgumentError("best_of", f"only best_of == n ({self.n or 1}) is supported, got "
                                       f"{self.best_of}: every sample is returned, none is picked by likelihood")
        if self.suffix:
            raise InvalidArgumentError("suffix", "is not supported: a left-to-right character model cannot "
                                       "insert text before a suffix")
        if self.stream_options is not None and not self.stream:
            raise InvalidArgumentError("stream_options", "is only allowed when stream is true")


def _float32(value: Any) -> Any:
    """A float as the gRPC wire (proto float) and the engine (float32 tensors) hold it, so that both APIs sample
    alike and a value too small for float32 (top_p 1e-60) becomes 0 here, where SamplingParams' bounds refuse it,
    rather than inside the sampler."""
    if isinstance(value, float) and math.isfinite(value) and abs(value) < FLOAT32_MAX:
        return struct.unpack("f", struct.pack("f", value))[0]
    return value


def _bias_character(key: str, vocabulary: str) -> str:
    """OpenAI's logit_bias keys are token ids; a character model's token id is the index in its vocabulary."""
    if not TOKEN_ID.fullmatch(key) or int(key) >= len(vocabulary):
        raise InvalidArgumentError("logit_bias", f"keys are token ids 0..{len(vocabulary) - 1} (the index in the "
                                   f"model's vocabulary), got {key[:20]!r}")
    return vocabulary[int(key)]


class ScoreRequest(BaseModel):
    """POST /v1/score: perplexity of a text (chargpt's Score)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    text: str
    stride: int | None = Field(default=None, ge=0, lt=2**31)
    include_token_logprobs: bool = False
