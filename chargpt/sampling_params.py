"""SamplingParams: every sampling field of GenerateRequest (names, bounds, defaults, docs), presets, proto mapping."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from chargpt.errors import validated

# Temperatures below this are greedy, as in vLLM (its _SAMPLING_EPS = 1e-5): the T -> 0 limit, with ties going to
# the first argmax exactly as at temperature 0. Anything from here up is sampled at the temperature given.
GREEDY_BELOW = 1e-5
DEFAULT_MAX_NEW_TOKENS = 256
# The constraint fields: at most one per request (each is a language the whole text must belong to).
CONSTRAINT_FIELDS = ("regex", "choices", "json_schema")
MAX_CHOICE_CHARS = 256


class SamplingPreset(StrEnum):
    """The notebook's three sampling settings (names are case-insensitive)."""

    FOCUSED = "focused"
    BALANCED = "balanced"
    CREATIVE = "creative"

    @classmethod
    def _missing_(cls, value: object) -> SamplingPreset | None:
        return cls.__members__.get(str(value).upper())


# The notebook's presets: the fields each one sets.
PRESET_VALUES: dict[SamplingPreset, dict[str, float | int]] = {
    SamplingPreset.FOCUSED: {"temperature": 0.3, "top_k": 5},
    SamplingPreset.BALANCED: {"temperature": 0.8, "top_k": 40},
    SamplingPreset.CREATIVE: {"temperature": 1.2, "top_k": 200},
}
_PRESET_HELP = ", ".join(f"{p.value} {v['temperature']}/{v['top_k']}" for p, v in PRESET_VALUES.items())


class SamplingParams(BaseModel):
    """How to sample a generation: one field per sampling field of GenerateRequest, with its bounds and default.

    Limits that depend on the model or the service (the service's max_new_tokens limit, the vocabulary of
    logit_bias keys) are checked against the model separately, when a request is served.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1, lt=2**31,
                                description="characters to generate, 1 to the service's limit")
    temperature: float = Field(default=1.0, ge=0.0, le=100.0, allow_inf_nan=False,
                               description=f"softmax temperature, 0..100; 0 (or below {GREEDY_BELOW:g}) is greedy")
    top_k: int = Field(default=0, ge=0, lt=2**31,
                       description="keep the k most likely characters (ties kept); 0 keeps all")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False,
                         description="nucleus sampling mass in (0, 1]; 1 keeps all")
    min_p: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                         description="drop characters below min_p x the most likely one's probability")
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=100.0, allow_inf_nan=False,
                                      description="CTRL-style divisor for seen characters (> 1 discourages repeats)")
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, allow_inf_nan=False,
                                     description="-2..2, per generated occurrence (OpenAI)")
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, allow_inf_nan=False,
                                    description="-2..2, once a character was generated (OpenAI)")
    seed: int | None = Field(default=None, ge=0, lt=2**64,
                             description="random seed; the same seed and request give the same text (unset: chosen)")
    stop: tuple[str, ...] = Field(default=(), max_length=16,
                                           description="stop sequences (at most 16, each 1-64 characters)")
    n: int = Field(default=1, ge=1, le=16, description="independent samples of the prompt, 1..16")
    logprobs: int = Field(default=0, ge=0, le=20,
                          description="each character's log-probability and its N most likely alternatives (the "
                          "model's raw distribution, 0..20)")
    logit_bias: dict[str, float] = Field(default_factory=dict, max_length=256,
                                              description="character -> bias added to its logit, -100..100")
    regex: str | None = Field(default=None, min_length=1, max_length=4096,
                              description="the whole text fully matches this regular expression (Rust regex syntax)")
    choices: tuple[str, ...] = Field(default=(), max_length=256,
                                     description="the text is exactly one of these strings (each 1-256 characters)")
    json_schema: str | None = Field(default=None, min_length=1, max_length=65536,
                                    description="the text is a JSON document valid against this JSON schema "
                                    "(its JSON text)")
    preset: SamplingPreset | None = Field(default=None, description=f"the notebook's settings ({_PRESET_HELP}); "
                                          "fields given explicitly override the preset's")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """A preset fills the fields it sets that were not given; the validated model holds the values (preset
        None), so a preset and its values spelled out are the same SamplingParams."""
        if not isinstance(data, Mapping) or data.get("preset") is None:
            return data
        try:
            preset = SamplingPreset(data["preset"])
        except ValueError:
            return data  # the field's own validation names it
        return {**PRESET_VALUES[preset], **{k: v for k, v in data.items() if k != "preset"}}

    # Element bounds live in validators, not in the annotations, so that the types other APIs derive from these
    # fields (chargpt_client.SamplingOptions, the OpenAI schema) are plain.
    @field_validator("stop")
    @classmethod
    def _stop_lengths(cls, stop: tuple[str, ...]) -> tuple[str, ...]:
        if not all(1 <= len(s) <= 64 for s in stop):
            raise ValueError("each stop sequence must be 1-64 characters")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _bias_entries(cls, bias: dict[str, float]) -> dict[str, float]:
        for char, value in bias.items():
            if len(char) != 1:
                raise ValueError(f"keys must be single characters, got {char[:20]!r}")
            if not (math.isfinite(value) and -100.0 <= value <= 100.0):
                raise ValueError(f"values must be in [-100, 100], got {value} for {char!r}")
        return bias

    @field_validator("choices")
    @classmethod
    def _choice_lengths(cls, choices: tuple[str, ...]) -> tuple[str, ...]:
        if not all(1 <= len(c) <= MAX_CHOICE_CHARS for c in choices):
            raise ValueError(f"each choice must be 1-{MAX_CHOICE_CHARS} characters")
        return choices

    @field_validator("json_schema", mode="before")
    @classmethod
    def _schema_text(cls, schema: Any) -> Any:
        """A schema given as a mapping (OpenAI's APIs send one) becomes its JSON text; JSON text must parse to an
        object (or true/false, JSON Schema's trivial schemas)."""
        if isinstance(schema, Mapping):
            return json.dumps(schema)  # key order kept: it is the order the document's properties take
        if isinstance(schema, str):
            try:
                parsed = json.loads(schema)
            except ValueError as exc:
                raise ValueError(f"is not JSON: {exc}") from None
            if not isinstance(parsed, dict | bool):
                raise ValueError("must be a JSON object (a schema)")
        return schema

    @field_validator("choices", "json_schema")
    @classmethod
    def _one_constraint(cls, value: Any, info: ValidationInfo) -> Any:
        """A second constraint is refused naming itself (fields validate in order: regex, choices, json_schema)."""
        earlier = [name for name in CONSTRAINT_FIELDS[:CONSTRAINT_FIELDS.index(str(info.field_name))]
                   if info.data.get(name)]
        if value and earlier:
            raise ValueError(f"give at most one of {', '.join(CONSTRAINT_FIELDS)} (got {earlier[0]} too)")
        return value

    @property
    def constraint(self) -> tuple[str, str | tuple[str, ...]] | None:
        """The constraint field given and its value, or None for free text."""
        return next(((name, getattr(self, name)) for name in CONSTRAINT_FIELDS if getattr(self, name)), None)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


SAMPLING_PRESETS: dict[SamplingPreset, SamplingParams] = {p: SamplingParams.model_validate(v)
                                                        for p, v in PRESET_VALUES.items()}


def resolve_sampling(preset: SamplingPreset | str | None = None, **given: Any) -> SamplingParams:
    """A preset (or the defaults) with every given field (None: not given) overriding it; INVALID_ARGUMENT names
    the first bad field."""
    return validated(SamplingParams, {k: v for k, v in {"preset": preset, **given}.items() if v is not None})


def optional_fields(rename: Mapping[str, str] | None = None, types: Mapping[str, Any] | None = None,
                    defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """SamplingParams' fields for pydantic.create_model, each optional (None: not given) and typed only (their
    bounds are SamplingParams' to check), with its description; `rename`, `types` and `defaults` respell some for
    another API (e.g. OpenAI's max_tokens)."""
    rename, types, defaults = rename or {}, types or {}, defaults or {}
    fields: dict[str, Any] = {}
    for name, info in SamplingParams.model_fields.items():
        annotation: Any = types.get(name, info.annotation)
        fields[rename.get(name, name)] = (annotation | None, Field(default=defaults.get(name),
                                                                   description=info.description))
    return fields
