"""ModelConfig validation and parameter counting."""

import pytest
import torch
from pydantic import ValidationError

from chargpt.core.config import ModelConfig
from chargpt.core.model import GPT


def test_notebook_config_has_10_7m_parameters() -> None:
    config = ModelConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)
    assert config.parameter_count() == 10_745_088
    with torch.device("meta"):
        assert GPT(config).num_parameters() == config.parameter_count()


@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count_matches_module(bias: bool) -> None:
    config = ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=bias)
    assert GPT(config).num_parameters() == config.parameter_count()


@pytest.mark.parametrize("fields", [
    {"n_embd": 30, "n_head": 4},
    {"n_layer": 0},
    {"vocab_size": 0},
    {"block_size": -1},
    {"dropout": 1.0},
    {"unknown": 1},
])
def test_invalid_configs_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ModelConfig(**{"vocab_size": 10, **fields})
