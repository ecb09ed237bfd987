"""Sampling options for generate: every SamplingParams field, typed; None leaves it to the server's default."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

from pydantic import ConfigDict, create_model

from chargpt.sampling_params import optional_fields

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
        """Options from keyword values; None, an empty string and an empty collection count as not given (the
        server's default is the same)."""
        return cls(**{k: v for k, v in values.items() if v is not None and not (isinstance(v, Sized) and not len(v))})
