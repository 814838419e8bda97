"""An audience: a topic's members, optionally narrowed by a filter on subscriber fields.

Pure (no database): the broadcast workflow and the store share it, and the
workflow sandbox can import it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.flows import FLOW_KEY_PATTERN

TOPIC_KEY_PATTERN = FLOW_KEY_PATTERN
# The subscriber columns a filter may name; anything else lives under ``data.<key>``.
SUBSCRIBER_FIELDS = frozenset({"id", "email", "phone", "name", "locale", "timezone"})
DATA_PATH = re.compile(r"^data(\.[A-Za-z0-9_-]{1,64}){1,8}$")
MAX_IN = 1000
_SCALARS = (str, int, float, bool, type(None))
_SCALAR_SCHEMA = {"type": ["string", "number", "boolean", "null"]}
# What ``where`` takes, for the OpenAPI document: the validator below enforces the same.
WHERE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": 20,
    "propertyNames": {
        "anyOf": [{"enum": sorted(SUBSCRIBER_FIELDS)}, {"pattern": DATA_PATH.pattern}]
    },
    "additionalProperties": {
        "anyOf": [
            _SCALAR_SCHEMA,
            {
                "type": "object",
                "required": ["in"],
                "additionalProperties": False,
                "properties": {
                    "in": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_IN,
                        "items": _SCALAR_SCHEMA,
                    }
                },
            },
        ]
    },
    "description": 'Equality with a scalar, or {"in": [scalars]}, per subscriber field or '
    "data.<key>",
}


class Audience(BaseModel):
    """``{"topic": "beta", "where": {"locale": "de", "data.plan": {"in": ["pro", "team"]}}}``."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(pattern=TOPIC_KEY_PATTERN)
    where: dict[str, Any] = Field(
        default_factory=dict, max_length=20, json_schema_extra=WHERE_SCHEMA
    )

    @field_validator("where")
    @classmethod
    def _known_fields(cls, where: dict[str, Any]) -> dict[str, Any]:
        # Errors carry the key in their loc (["...", "where", "plan"]), so a 422 names it.
        errors = [
            InitErrorDetails(type=err, loc=(key,), input=value)
            for key, value in where.items()
            if (err := _check(key, value)) is not None
        ]
        if errors:
            raise ValidationError.from_exception_data("where", errors)
        return {k: _normalise(v) for k, v in where.items()}


def _check(key: str, value: Any) -> PydanticCustomError | None:
    if key not in SUBSCRIBER_FIELDS and not DATA_PATH.fullmatch(key):
        return PydanticCustomError(
            "unknown_field",
            "unknown field {field}: use one of {known} or data.<key>",
            {"field": key, "known": ", ".join(sorted(SUBSCRIBER_FIELDS))},
        )
    if isinstance(value, _SCALARS):
        return None
    if isinstance(value, dict) and set(value) == {"in"} and isinstance(value["in"], list):
        if not 0 < len(value["in"]) <= MAX_IN:
            return PydanticCustomError("in_size", "'in' takes 1 to {max} values", {"max": MAX_IN})
        if all(isinstance(v, _SCALARS) for v in value["in"]):
            return None
    return PydanticCustomError("filter_value", 'must be a scalar (equality) or {"in": [scalars]}')


def _normalise(value: Any) -> Any:
    return {"in": list(value["in"])} if isinstance(value, dict) else value


def field_value(row: Any, key: str) -> Any:
    """The value ``key`` names on a subscriber (a mapping or an object); None if absent."""
    parts = key.split(".")
    head = parts[0]
    value = row.get(head) if isinstance(row, Mapping) else getattr(row, head, None)
    for part in parts[1:]:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _equal(a: Any, b: Any) -> bool:
    # JSON true is not 1: a bool only equals a bool.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def matches(audience: Audience, row: Any) -> bool:
    """Whether a subscriber (row, model or mapping) passes every ``where`` condition."""
    for key, wanted in audience.where.items():
        have = field_value(row, key)
        if isinstance(wanted, dict):
            if not any(_equal(have, w) for w in wanted["in"]):
                return False
        elif not _equal(have, wanted):
            return False
    return True


def data_filtered(audience: Audience) -> bool:
    """Whether matching needs the subscriber's ``data`` (a larger column to read)."""
    return any(key.startswith("data.") for key in audience.where)
