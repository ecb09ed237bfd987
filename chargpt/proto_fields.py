"""A message's fields as a dict of the values given, and back: enums by short name, unset fields left out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from chargpt.errors import InvalidArgumentError


def enum_names(enum: EnumDescriptor) -> dict[int, str]:
    """A v1 enum's values by short name, e.g. SAMPLING_PRESET_FOCUSED -> "focused"; UNSPECIFIED (0) is left out."""
    prefix = enum.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return {v.number: v.name.removeprefix(prefix).lower() for v in enum.values if v.number}


def given_fields(message: Message, names: Iterable[str]) -> dict[str, Any]:
    """The named fields the sender set: optional scalars when present, repeated and map fields when not empty,
    enums (by short name) when not UNSPECIFIED, plain scalars always. An unknown enum number is INVALID_ARGUMENT."""
    values: dict[str, Any] = {}
    for name in names:
        fd, value = message.DESCRIPTOR.fields_by_name[name], getattr(message, name)
        if fd.enum_type is not None:
            choices = enum_names(fd.enum_type)
            if value and value not in choices:
                raise InvalidArgumentError(name, f"unknown {name} {value}")
            if value:
                values[name] = choices[value]
        elif fd.is_repeated:
            if value:
                values[name] = dict(value) if isinstance(value, Mapping) else list(value)
        elif not fd.has_presence or message.HasField(name):
            values[name] = value
    return values


def set_fields(message: Message, values: Mapping[str, Any]) -> None:
    """Set each named field of `message`: enums by short name (case-insensitive; ValueError if unknown),
    repeated fields from a sequence, maps from a mapping."""
    for name, value in values.items():
        fd = message.DESCRIPTOR.fields_by_name[name]
        if fd.enum_type is not None:
            numbers = {short: number for number, short in enum_names(fd.enum_type).items()}
            if str(value).lower() not in numbers:
                raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(numbers)}")
            setattr(message, name, numbers[str(value).lower()])
        elif isinstance(value, Mapping):
            getattr(message, name).update(value)
        elif fd.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
