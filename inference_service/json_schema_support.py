"""Which JSON Schema keywords a constraint can hold to: outlines-core's conversion silently drops some, so those
are refused up front rather than letting a `stop` text break the schema."""

from __future__ import annotations

import json
from typing import Any

from chargpt.errors import InvalidArgumentError

# Keywords the regex conversion ignores (the text would not hold to them) or cannot express exactly: oneOf is
# compiled as anyOf, so a text matching two branches would pass though the schema says exactly one.
UNENFORCED = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems", "minProperties",
    "maxProperties", "contains", "minContains", "maxContains", "dependentRequired", "dependentSchemas",
    "propertyNames", "patternProperties", "unevaluatedProperties", "unevaluatedItems", "if", "then", "else", "not",
    "oneOf",
})
SCHEMA_MAPS = ("properties", "$defs", "definitions")  # name -> subschema (the names are the user's, not keywords)
SCHEMA_LISTS = ("anyOf", "allOf", "prefixItems")
SCHEMA_VALUES = ("items", "additionalProperties")


def check_supported(schema_text: str, field: str = "json_schema") -> None:
    """INVALID_ARGUMENT naming the first keyword (and where it stands) that a constraint would not hold to."""
    try:
        schema = json.loads(schema_text)
    except ValueError as exc:
        raise InvalidArgumentError(field, f"is not JSON: {exc}") from None
    found = _first_unenforced(schema, "#")
    if found is not None:
        keyword, where = found
        raise InvalidArgumentError(field, f"{keyword!r} at {where} is not supported: generation could not hold the "
                                   f"text to it (unsupported: {', '.join(sorted(UNENFORCED))})")


def _first_unenforced(schema: Any, where: str) -> tuple[str, str] | None:
    if not isinstance(schema, dict):
        return None
    for keyword in schema:
        if keyword in UNENFORCED:
            return keyword, where
    children: list[tuple[Any, str]] = []
    for key in SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            children += [(sub, f"{where}/{key}/{name}") for name, sub in schema[key].items()]
    for key in SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            children += [(sub, f"{where}/{key}/{i}") for i, sub in enumerate(schema[key])]
    for key in SCHEMA_VALUES:
        value = schema.get(key)
        children += [(sub, f"{where}/{key}/{i}") for i, sub in enumerate(value)] if isinstance(value, list) \
            else [(value, f"{where}/{key}")]
    for sub, path in children:
        found = _first_unenforced(sub, path)
        if found is not None:
            return found
    return None
