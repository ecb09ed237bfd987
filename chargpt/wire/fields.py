"""A v1 message's fields by name, read from a message or from any object spelling them the same way."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message


def field_names(message_type: type[Message]) -> tuple[str, ...]:
    """The message's field names in declaration order (the proto is the one list of them)."""
    return tuple(fd.name for fd in message_type.DESCRIPTOR.fields)


def message_values(message: Message) -> dict[str, Any]:
    """Every field of the message by name, unset ones at their defaults."""
    return {name: getattr(message, name) for name in field_names(type(message))}


def attribute_values(message_type: type[Message], source: object) -> dict[str, Any]:
    """The message's fields read from `source`'s attributes of the same names; an object lacking one raises
    AttributeError, so a field added to the proto cannot be dropped silently."""
    return {name: getattr(source, name) for name in field_names(message_type)}
