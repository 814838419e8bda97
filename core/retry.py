"""Declarative retry policies: channel defaults in settings, per-step overrides in flows.

Field names are Temporal's own, so what a flow says is what the Temporal UI shows on
the activity. Durations are ISO 8601 (``PT30S``, ``P1D``) or seconds.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _positive(v: timedelta) -> timedelta:
    if v <= timedelta(0):
        raise ValueError("must be a positive duration (ISO 8601 such as PT30S, or seconds)")
    return v


Duration = Annotated[timedelta, AfterValidator(_positive)]


class RetryOverride(BaseModel):
    """What a flow step may change; unset fields keep the channel default."""

    model_config = ConfigDict(extra="forbid")

    initial_interval: Duration | None = None
    backoff_coefficient: float | None = Field(default=None, ge=1.0, le=100.0)
    maximum_interval: Duration | None = None
    maximum_attempts: int | None = Field(
        default=None, ge=0, le=1000, description="0 means no limit (the deadline still applies)"
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
