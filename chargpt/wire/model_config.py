"""common.v1.ModelConfig <-> the core's ModelConfig and the client's (the same field names as the proto)."""

from __future__ import annotations

from typing import Any

from chargpt.v1 import common_pb2
from chargpt.wire.fields import attribute_values, message_values

FLOAT32_DIGITS = 6  # dropout is a float32 on the wire: 0.1 arrives as 0.10000000149, six digits give back 0.1


def model_config_proto(config: object) -> common_pb2.ModelConfig:
    """The message from any object with the proto's field names (the core's pydantic model, the client's type)."""
    return common_pb2.ModelConfig(**attribute_values(common_pb2.ModelConfig, config))


def model_config_values(message: common_pb2.ModelConfig) -> dict[str, Any]:
    """The message's fields by name, dropout as it was written."""
    values = message_values(message)
    values["dropout"] = round(values["dropout"], FLOAT32_DIGITS)
    return values
