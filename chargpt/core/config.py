"""Typed, validated model configuration (the architecture half of a checkpoint manifest)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class ModelConfig(BaseModel):
    """Architecture of a character-level GPT in the nanoGPT layout."""

    # The one place for the architecture's bounds (the trainer validates requests against them). n_embd comes
    # before n_head so that the divisibility check can name n_head.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    vocab_size: int = Field(ge=1, le=1_114_112, description="characters in the vocabulary")
    block_size: int = Field(default=256, ge=1, le=65_536, description="context window in characters")
    n_layer: int = Field(default=6, ge=1, le=128)
    n_embd: int = Field(default=384, ge=1, le=16_384)
    n_head: int = Field(default=6, ge=1, le=128)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    bias: bool = Field(default=False, description="bias in Linear and LayerNorm layers")

    @field_validator("n_head")
    @classmethod
    def _heads_divide_width(cls, value: int, info: ValidationInfo) -> int:
        width = info.data.get("n_embd")
        if width is not None and width % value != 0:
            raise ValueError(f"must divide n_embd ({width}); got {value}")
        return value

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def parameter_count(self) -> int:
        """Parameters of the model (the tied head counted once), without building it."""
        c, b = self.n_embd, int(self.bias)
        ln = c * (1 + b)
        attn = c * 3 * c + 3 * c * b + c * c + c * b
        mlp = c * 4 * c + 4 * c * b + 4 * c * c + c * b
        per_layer = 2 * ln + attn + mlp
        return self.vocab_size * c + self.block_size * c + self.n_layer * per_layer + ln
