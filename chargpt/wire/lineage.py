"""common.v1.Lineage <-> the core's Lineage (a checkpoint manifest's parent) and the client's."""

from __future__ import annotations

from typing import Any

from chargpt.v1 import common_pb2
from chargpt.wire.checkpoint_kinds import kind_name, kind_number
from chargpt.wire.fields import attribute_values, message_values


def lineage_proto(lineage: object) -> common_pb2.Lineage:
    """The message from any object with the proto's field names, `kind` by its name ("best", "latest", "")."""
    values = attribute_values(common_pb2.Lineage, lineage)
    values["kind"] = kind_number(values["kind"])
    return common_pb2.Lineage(**values)


def lineage_values(message: common_pb2.Lineage) -> dict[str, Any]:
    """The message's fields by name, `kind` by its name."""
    values = message_values(message)
    values["kind"] = kind_name(message.kind)
    return values
