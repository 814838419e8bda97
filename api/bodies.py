"""Request bodies the API reads as a store model, with the OpenAPI schema of what it enforces.

``store.broadcasts.BroadcastCreate`` keeps its audience a plain dict (the store's shape); the
API validates it as an ``Audience`` and takes exactly one of ``flow`` or ``event_type``. These
subclasses validate exactly as their store model does, apart from times, and document the rest.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import StringConstraints, WithJsonSchema
from sqlmodel.main import SQLModelConfig

from core.audience import Audience
from store.broadcasts import BroadcastCreate
from store.models import NO_NUL, IsoDateTime


def _one_target(schema: dict[str, Any]) -> None:
    schema["oneOf"] = [
        {"required": [name], "properties": {name: {"type": "string"}}}
        for name in ("flow", "event_type")
    ]
    schema["description"] = "Exactly one of flow or event_type (every flow of it)."


class BroadcastIn(BroadcastCreate):
    model_config = SQLModelConfig(json_schema_extra=_one_target)

    event_type: Annotated[str, StringConstraints(max_length=128, pattern=NO_NUL)] | None = None
    flow: Annotated[str, StringConstraints(max_length=128, pattern=NO_NUL)] | None = None
    audience: Annotated[dict[str, Any], WithJsonSchema(Audience.model_json_schema())]
    idempotency_key: (
        Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NO_NUL)] | None
    ) = None
    send_at: IsoDateTime | None = None


def _unscheduled(schema: dict[str, Any]) -> None:
    _one_target(schema)
    for name in ("send_at", "idempotency_key"):  # each run is sent when it runs, keyed by it
        schema["properties"][name] = {"type": "null", "description": "Not for a schedule"}


class ScheduledBroadcastIn(BroadcastIn):
    """A schedule's broadcast: each run is sent when the schedule fires, keyed by its run."""

    model_config = SQLModelConfig(json_schema_extra=_unscheduled)
