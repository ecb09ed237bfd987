"""Request bodies of the OpenAI-compatible API (pydantic); the completion's sampling fields come from SamplingParams."""

from __future__ import annotations

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


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = True  # chargpt default: the last event before [DONE] carries usage


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

    model: str
    prompt: str | list[str] = ""
    echo: bool = False
    user: str | None = None  # accepted for compatibility; chargpt does not use it
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Constraints under vLLM's names: today's `structured_outputs`, the guided_* fields it had until v0.12, and
    # OpenAI's response_format (see constraint_values); chargpt's own regex/choices/json_schema work too.
    structured_outputs: StructuredOutputs | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_json: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise InvalidArgumentError("prompt", f"give 1..{MAX_PROMPTS} prompts, got {len(prompts)}")
        return prompts

    def sampling_values(self) -> dict[str, Any]:
        """The sampling fields given (not None), by SamplingParams name, in OpenAI's types."""
        return {name: value for openai_name, name in SAMPLING_NAMES.items()
                if (value := getattr(self, openai_name)) is not None}

    def sampling_params(self, vocabulary: str) -> SamplingParams:
        """The body's SamplingParams (validated by the same model as gRPC requests); `vocabulary` maps
        logit_bias token ids to the model's characters."""
        values = self.sampling_values()
        if self.echo and values.get("logprobs"):
            raise InvalidArgumentError("echo", "echo with logprobs is not supported; use /v1/score for the "
                                       "prompt's log-probabilities")
        if isinstance(values.get("stop"), str):
            values["stop"] = [values["stop"]]
        if "logit_bias" in values:
            values["logit_bias"] = {_bias_character(k, vocabulary): v for k, v in values["logit_bias"].items()}
        return resolve_sampling(**values, **self.constraint_values())

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
        if len(given) > 1:
            raise InvalidArgumentError(given[1][0], f"give one constraint (got {given[0][0]} too)")
        return {field: value for _, field, value in given if field not in self.sampling_values()}


def _bias_character(key: str, vocabulary: str) -> str:
    """OpenAI's logit_bias keys are token ids; a character model's token id is the index in its vocabulary."""
    if not key.isdigit() or int(key) >= len(vocabulary):
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
