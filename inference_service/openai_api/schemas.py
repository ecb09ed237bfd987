"""Request bodies of the OpenAI-compatible API (pydantic), and their translation to chargpt's GenerateRequest."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chargpt.errors import InvalidArgumentError
from chargpt.v1 import inference_pb2

PRESET_VALUES: dict[str, inference_pb2.SamplingPreset] = {"focused": inference_pb2.SAMPLING_PRESET_FOCUSED,
                 "balanced": inference_pb2.SAMPLING_PRESET_BALANCED,
                 "creative": inference_pb2.SAMPLING_PRESET_CREATIVE}
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_PROMPTS = 16


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = True  # chargpt default: the last event before [DONE] carries usage


class CompletionRequest(BaseModel):
    """POST /v1/completions: OpenAI's fields plus chargpt's extras (top_k, min_p, repetition_penalty, preset).
    Unknown fields are rejected rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | list[str] = ""
    max_tokens: int | None = Field(default=DEFAULT_MAX_TOKENS)
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    logprobs: int | None = None
    echo: bool = False
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # accepted for compatibility; chargpt does not use it
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int | None = Field(default=None, ge=0, lt=2**31)
    min_p: float | None = None
    repetition_penalty: float | None = None
    preset: Literal["focused", "balanced", "creative"] | None = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise InvalidArgumentError("prompt", f"give 1..{MAX_PROMPTS} prompts, got {len(prompts)}")
        return prompts

    def to_grpc(self, prompt: str, vocabulary: str) -> inference_pb2.GenerateRequest:
        """The equivalent GenerateRequest (validated by the same code as gRPC requests)."""
        if self.echo and self.logprobs:
            raise InvalidArgumentError("echo", "echo with logprobs is not supported; use /v1/score for the "
                                       "prompt's log-probabilities")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidArgumentError("max_tokens", f"must be at least 1, got {self.max_tokens}")
        preset = PRESET_VALUES.get(self.preset or "", inference_pb2.SAMPLING_PRESET_UNSPECIFIED)
        request = inference_pb2.GenerateRequest(
            model=self.model, prompt=prompt, n=self.n,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            logprobs=self.logprobs or 0, preset=preset)
        if self.max_tokens is not None:
            request.max_new_tokens = self.max_tokens
        for name in ("temperature", "top_p", "seed", "top_k", "presence_penalty", "frequency_penalty", "min_p",
                     "repetition_penalty"):
            value = getattr(self, name)
            if value is not None:
                setattr(request, name, value)
        for key, value in (self.logit_bias or {}).items():
            request.logit_bias[_bias_character(key, vocabulary)] = value
        return request


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
