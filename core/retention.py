"""Retention settings: how long finished notifications and their history are kept."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field, field_validator

from core.preferences import HHMM

MIN_RETENTION = timedelta(days=1)


class RetentionSettings(BaseModel):
    """Mixed into ``Settings``: ``HERALD_RETENTION``, ``_AT`` and ``_BATCH_SIZE``."""

    # Rows of finished notifications older than this are deleted daily (ISO 8601 or seconds).
    retention: timedelta = timedelta(days=90)
    # When the daily run starts, HH:MM in UTC: a quiet hour, off the full hour.
    retention_at: str = Field(default="03:17", pattern=HHMM)
    # Rows one transaction deletes (notifications with their deliveries, or events).
    retention_batch_size: int = Field(default=1000, ge=1, le=10_000)

    @field_validator("retention", mode="before")
    @classmethod
    def _seconds(cls, v: object) -> object:
        return int(v) if isinstance(v, str) and v.strip().isdigit() else v

    @field_validator("retention")
    @classmethod
    def _at_least_a_day(cls, v: timedelta) -> timedelta:
        # A typo such as PT90S would wipe nearly all history within a day.
        if v < MIN_RETENTION:
            raise ValueError("must be at least one day (P1D), e.g. P90D")
        return v
