"""Events the outbox failed to hand to Temporal, and the ones it gave up on.

A table of its own rather than columns on ``events``, which stays narrow for the hot
accept path. Only failures that are the event's own (Temporal refused its input) count;
an outage does not.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from store.db import dialect_insert, session_scope
from store.events import AcceptedEvent, _load_accepted
from store.models import Event, UTCDateTime, _ts, utcnow

REASON_LENGTH = 2000


class DispatchFailure(SQLModel, table=True):
    __tablename__ = "dispatch_failures"
    event_id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(max_length=64)
    attempts: int = 0
    reason: str = Field(max_length=REASON_LENGTH)
    last_failed_at: datetime = _ts()
    # Set once attempts reached HERALD_DISPATCH_MAX_ATTEMPTS: the sweep leaves it alone.
    given_up_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)


def record_failure(
    engine: Engine, event_id: str, tenant_id: str, reason: str, max_attempts: int
) -> bool:
    """Count one failed hand-over; True when this one made the outbox give up."""
    now = utcnow()
    reason = reason[:REASON_LENGTH]
    with session_scope(engine) as session:
        insert = dialect_insert(session)(DispatchFailure).values(
            event_id=event_id, tenant_id=tenant_id, attempts=1, reason=reason, last_failed_at=now
        )
        table = DispatchFailure.__table__  # type: ignore[attr-defined]
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["event_id"],
                set_={
                    "attempts": table.c.attempts + 1,
                    "reason": reason,
                    "last_failed_at": now,
                },
            )
        )
        row = session.get(DispatchFailure, event_id, populate_existing=True)
        assert row is not None
        if row.given_up_at is None and row.attempts >= max_attempts:
            row.given_up_at = now
            session.add(row)
            return True
    return False


def pending(engine: Engine, *, received_before: datetime, limit: int) -> list[AcceptedEvent]:
    """Events stored but never handed to Temporal, but for those the outbox gave up on."""
    given_up = exists().where(
        col(DispatchFailure.event_id) == col(Event.id),
        col(DispatchFailure.given_up_at).is_not(None),
    )
    with session_scope(engine) as session:
        events = session.exec(
            select(Event)
            .where(col(Event.dispatched_at).is_(None), Event.received_at < received_before)
            .where(~given_up)
            .order_by(col(Event.received_at))
            .limit(limit)
        ).all()
        return [_load_accepted(session, e, created=False) for e in events]


def failure_of(session: Session, event_id: str) -> DispatchFailure | None:
    return session.get(DispatchFailure, event_id)
