"""Hypothesis strategies for any protobuf message, built from its descriptor, with per-field overrides.

Every field may be unset or set; scalars range over their whole wire type (extremes, NaN and infinities
included), strings over arbitrary unicode with occasional huge values, enums over known and unknown numbers,
oneofs set at most one member. `overrides` maps "package.Message.field" to a strategy for that field's value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

FD = descriptor.FieldDescriptor
Overrides = Mapping[str, st.SearchStrategy[Any]]

_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
HUGE_TEXT = st.sampled_from(["x" * 70_000, "é" * 20_000, "\U0001f642" * 5_000, "\x00" * 1000])
ANY_TEXT = st.one_of(_TEXT, _TEXT, _TEXT, HUGE_TEXT)


def _ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    extremes = st.sampled_from(sorted({low, high, 0, 1, -1 if signed else 2, low + 1, high - 1}))
    return st.one_of(extremes, st.integers(-1000 if signed else 0, 1000), st.integers(low, high))


def _scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return _ints(32, True)
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return _ints(64, True)
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return _ints(32, False)
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return _ints(64, False)
    if t == FD.TYPE_FLOAT:
        return st.floats(width=32)
    if t == FD.TYPE_DOUBLE:
        return st.floats()
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t == FD.TYPE_STRING:
        return ANY_TEXT
    if t == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FD.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 1000))
    raise TypeError(f"no strategy for field type {t} ({field.full_name})")


def field_value(field: descriptor.FieldDescriptor, overrides: Overrides, depth: int) -> st.SearchStrategy[Any]:
    """A value for one field (a list for repeated fields, a message for message fields)."""
    if field.full_name in overrides:
        return overrides[field.full_name]
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return st.dictionaries(_scalar(key), field_value(value, overrides, depth), max_size=3)
    single = (message_strategy(field.message_type, overrides, depth + 1) if field.message_type is not None
              else _scalar(field))
    if _is_repeated(field):
        return st.lists(single, max_size=6)
    return single


def _is_repeated(field: descriptor.FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == FD.LABEL_REPEATED)


def message_strategy(desc: descriptor.Descriptor, overrides: Overrides | None = None,
                     depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of this type with any subset of fields set (nested messages down to depth 3)."""
    overrides = overrides or {}
    cls = message_factory.GetMessageClass(desc)
    # proto3 `optional` fields sit in synthetic one-member oneofs named "_<field>": they are plain fields here
    real_oneofs = [o for o in desc.oneofs if not (len(o.fields) == 1 and o.name == f"_{o.fields[0].name}")]
    in_oneof = {f.name for o in real_oneofs for f in o.fields}
    plain = [f for f in desc.fields if f.name not in in_oneof and (f.message_type is None or depth < 3)]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in plain:
            if draw(st.booleans()):
                _assign(message, field, draw(field_value(field, overrides, depth)))
        for oneof in real_oneofs:
            chosen = draw(st.sampled_from([None, *oneof.fields]))
            if chosen is not None:
                _assign(message, chosen, draw(field_value(chosen, overrides, depth)))
        return message

    return build()


def _assign(message: Message, field: descriptor.FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        target.update(value)
    elif _is_repeated(field):
        target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)
