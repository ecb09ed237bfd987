"""Sampling options for generate: every SamplingParams field, typed; None leaves it to the server's default."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sized
from typing import Any

from pydantic import ConfigDict, create_model

from chargpt.sampling_params import optional_fields

EMPTY_IS_DEFAULT = frozenset({"stop", "logit_bias"})  # fields whose empty value is the server's default
_SamplingFields = create_model("_SamplingFields", __config__=ConfigDict(frozen=True, extra="forbid"),
                               **optional_fields())


class SamplingOptions(_SamplingFields):  # type: ignore[misc,valid-type]  # fields built from SamplingParams
    """How to sample a generation: the fields of chargpt.sampling_params.SamplingParams (max_new_tokens,
    temperature, top_k, top_p, min_p, the penalties, seed, stop, n, logprobs, logit_bias, regex, choices,
    json_schema, preset), all optional.
    Only the types are checked here: the server holds the bounds and defaults and answers INVALID_ARGUMENT naming
    the field; an explicit 0 is sent as 0, never as unset. Field docs: `SamplingOptions.model_fields`."""

    def given(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return dict(self.model_dump(exclude_none=True))

    @classmethod
    def of(cls, values: dict[str, Any]) -> SamplingOptions:
        """Options from keyword values; None is not given, and so is an empty `stop` or `logit_bias` (the server's
        default is the same). Anything else is sent for the server to judge: `regex=""` is refused naming regex,
        never read as "no constraint"; `choices=[]` is refused here (on the wire it would read as not given). A
        `json_schema` may be a mapping (sent as its JSON text)."""
        choices, schema = values.get("choices"), values.get("json_schema")
        if isinstance(schema, Mapping):  # a schema given as an object: its JSON text, as over HTTP
            values = {**values, "json_schema": json.dumps(schema)}
        if choices is not None and not len(choices):
            raise ValueError("choices: give at least one choice (an empty list would generate unconstrained text)")
        return cls(**{k: v for k, v in values.items()
                      if v is not None and not (k in EMPTY_IS_DEFAULT and isinstance(v, Sized) and not len(v))})
