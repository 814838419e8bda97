"""Retention's one activity, a bounded batch of deletes, and the workflow's typed shapes.

The workflow's input and result live here rather than in its module: the sandbox
re-imports that module for every run, this one is imported once, passed through.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from temporalio import activity

from activities.defn import uninterrupted
from store.db import session_scope
from store.retention import Cutoff, Phase, purge


class RetentionInput(BaseModel):
    """What the daily schedule starts with; the rest is carried over continue-as-new."""

    retention: timedelta = timedelta(days=90)
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    # A notification with a failed delivery may wait this long for a `retry` signal.
    dead_letter_retention: timedelta = timedelta(days=7)
    # Batches per run before continuing as new, which keeps each history short.
    batches_per_run: int = Field(default=200, ge=1)
    # Set by the first run, so every batch of the day uses the same cutoff.
    as_of: datetime | None = None
    phase: Phase = Phase.NOTIFICATIONS
    batches: int = 0
    deleted: dict[str, int] = Field(default_factory=dict)


class RetentionResult(BaseModel):
    cutoff: datetime
    batches: int
    # Rows deleted per table over the whole run (continued runs included).
    deleted: dict[str, int]


class PurgeInput(BaseModel):
    phase: Phase
    before: datetime
    failed_before: datetime
    limit: int = Field(ge=1, le=10_000)


class PurgeResult(BaseModel):
    phase: Phase
    # Rows the phase picked; fewer than the limit means the phase is done.
    selected: int
    deleted: dict[str, int]


class RetentionActivities:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @uninterrupted("purge_batch")
    def purge_batch(self, inp: PurgeInput) -> PurgeResult:
        """One transaction; repeating it after a lost completion deletes what is left."""
        cutoff = Cutoff(before=inp.before, failed_before=inp.failed_before)
        with session_scope(self.engine) as session:
            purged = purge(session, inp.phase, cutoff, inp.limit)
        if purged.selected:
            activity.logger.info(
                "retention deleted %s (%s older than %s)",
                purged.deleted,
                inp.phase.value,
                inp.before.isoformat(),
            )
        return PurgeResult(phase=inp.phase, selected=purged.selected, deleted=purged.deleted)
