"""Declarative retry policies: channel defaults in settings, per-step overrides in flows.

Field names are Temporal's own, so what a flow says is what the Temporal UI shows on
the activity. Durations are ISO 8601 (``PT30S``, ``P1D``) or seconds.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from core.json_types import JSON_NUMBER

MAX_SECONDS = 86_399_999_999_999  # a second short of timedelta.max
_LONGEST = timedelta(seconds=MAX_SECONDS)


def _positive(v: timedelta) -> timedelta:
    if v <= timedelta(0):
        raise ValueError("must be a positive duration (ISO 8601 such as PT30S, or seconds)")
    if v > _LONGEST:
        raise ValueError(f"must be at most {MAX_SECONDS:,} seconds")
    return v


# What pydantic reads as a timedelta, so the OpenAPI document says so: ISO 8601 or seconds.
DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "duration", "examples": ["PT30S", "P1D"]},
        # Below a microsecond a number of seconds is no time at all.
        {"type": "number", "minimum": 1e-6, "maximum": MAX_SECONDS},
    ]
}
Duration = Annotated[timedelta, AfterValidator(_positive), WithJsonSchema(DURATION_SCHEMA)]


class RetryOverride(BaseModel):
    """What a flow step may change; unset fields keep the channel default."""

    model_config = ConfigDict(extra="forbid")

    initial_interval: Duration | None = None
    backoff_coefficient: Annotated[float, Field(ge=1.0, le=100.0), JSON_NUMBER] | None = None
    maximum_interval: Duration | None = None
    maximum_attempts: Annotated[int, Field(ge=0, le=1000), JSON_NUMBER] | None = Field(
        default=None, description="0 means no limit (the deadline still applies)"
    )


class RetrySpec(BaseModel):
    """A channel's complete policy, including how long to keep trying at all."""

    model_config = ConfigDict(extra="forbid")

    initial_interval: Duration = timedelta(seconds=1)
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=100.0)
    maximum_interval: Duration = timedelta(minutes=5)
    maximum_attempts: int = Field(default=10, ge=0, le=1000)
    schedule_to_close: Duration = timedelta(hours=1)
    # One attempt, provider call included; also how soon an attempt on a dead worker is retried.
    start_to_close: Duration = timedelta(seconds=30)

    def merged(self, override: RetryOverride | None) -> RetrySpec:
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_none=True))
