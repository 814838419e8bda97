"""The status stream's outbox: the delivery history itself, read in id order behind a cursor.

Every status change already appends a ``delivery_events`` row in the transaction that
makes it, so the history is a transactional outbox with no extra write on the send path.
A publisher reads rows after its committed position, publishes them, then moves the
position. A crash between the two publishes those rows again: each message carries the
row's id as a stable message id for consumers to drop repeats.

Ids are handed out at insert, not at commit: on PostgreSQL a row with a smaller id may
commit after a larger one was read. The position therefore only moves over ids that were
seen, or that stayed missing (a rolled-back insert) for ``grace``; rows above it that were
published already are remembered so they are not sent twice.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Field, Session, SQLModel, col

from store.db import dialect_insert
from store.models import Delivery, DeliveryEvent, Notification, UTCDateTime, utcnow

# The first status of every delivery, not a change: left out of the stream.
NOT_A_CHANGE = frozenset({"pending"})


class StreamCursor(SQLModel, table=True):
    """How far a named stream got: every history row at or below ``position`` is out."""

    __tablename__ = "stream_cursors"
    name: str = Field(primary_key=True, max_length=64)
    position: int = 0
    # The one process publishing it, until its lease runs out (renewed every batch).
    owner: str | None = Field(default=None, max_length=255)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


@dataclass(frozen=True)
class StatusChange:
    """One published message: what changed, on which delivery, for whom."""

    id: int
    tenant_id: str
    delivery_id: str
    notification_id: str
    event_id: str
    subscriber_id: str
    flow: str
    broadcast_id: str | None
    channel: str
    status: str
    reason: str | None
    provider: str | None
    source: str
    url: str | None
    at: datetime

    @property
    def message_id(self) -> str:
        """Stable across re-publishing: consumers drop a message id they have seen."""
        return f"herald-status-{self.id}"

    @property
    def routing_key(self) -> str:
        return f"{self.tenant_id}.{self.channel}.{self.status}"

    def body(self) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "tenant_id": self.tenant_id,
            "delivery_id": self.delivery_id,
            "notification_id": self.notification_id,
            "event_id": self.event_id,
            "subscriber_id": self.subscriber_id,
            "flow": self.flow,
            "broadcast_id": self.broadcast_id,
            "channel": self.channel,
            "status": self.status,
            "reason": self.reason,
            "provider": self.provider,
            "source": self.source,
            "url": self.url,
            "at": self.at.isoformat(),
        }


def position(session: Session, name: str) -> int:
    """Where the stream resumes; a new stream starts at the newest row (not the past)."""
    row = session.get(StreamCursor, name)
    if row is not None:
        return row.position
    newest = session.execute(sa_select(func.max(col(DeliveryEvent.id)))).scalar_one()
    start = int(newest or 0)
    stmt = dialect_insert(session)(StreamCursor).values(
        name=name, position=start, updated_at=utcnow()
    )
    session.execute(stmt.on_conflict_do_nothing())
    row = session.get(StreamCursor, name, populate_existing=True)
    assert row is not None
    return row.position


def claim(session: Session, name: str, owner: str, lease: float) -> int | None:
    """Take (or keep) the stream for ``lease`` seconds: its position, or None when another
    process holds it."""
    position(session, name)
    now = utcnow()
    taken = session.execute(
        update(StreamCursor)
        .where(
            col(StreamCursor.name) == name,
            or_(
                col(StreamCursor.owner).is_(None),
                col(StreamCursor.owner) == owner,
                col(StreamCursor.lease_until) < now,
            ),
        )
        .values(owner=owner, lease_until=now + timedelta(seconds=lease), updated_at=now)
        .returning(col(StreamCursor.position))
    ).first()
    return None if taken is None else int(taken[0])


def save_position(session: Session, name: str, value: int, owner: str | None = None) -> bool:
    """Move the position; only its lease holder may (False: the lease was lost)."""
    stmt = update(StreamCursor).where(col(StreamCursor.name) == name)
    if owner is not None:
        stmt = stmt.where(col(StreamCursor.owner) == owner)
    moved = session.execute(
        stmt.values(position=value, updated_at=utcnow()).returning(col(StreamCursor.name))
    ).first()
    return moved is not None


def history_after(
    session: Session, after: int, limit: int, missing: Collection[int] = ()
) -> list[tuple[int, StatusChange | None]]:
    """History rows with an id above ``after``, and those of ``missing`` (gaps below it
    that may yet commit), oldest first: (id, change or None when it is not a change, e.g.
    a delivery created pending)."""
    newer = col(DeliveryEvent.id) > after
    wanted = or_(newer, col(DeliveryEvent.id).in_(list(missing))) if missing else newer
    stmt = (
        sa_select(
            col(DeliveryEvent.id),
            col(DeliveryEvent.tenant_id),
            col(DeliveryEvent.delivery_id),
            col(Delivery.notification_id),
            col(Notification.event_id),
            col(Notification.subscriber_id),
            col(Notification.flow_key),
            col(Notification.broadcast_id),
            col(Delivery.channel),
            col(DeliveryEvent.status),
            col(DeliveryEvent.detail),
            col(Delivery.provider),
            col(DeliveryEvent.source),
            col(DeliveryEvent.url),
            col(DeliveryEvent.occurred_at),
            col(DeliveryEvent.created_at),
        )
        .join(Delivery, col(Delivery.id) == DeliveryEvent.delivery_id)
        .join(Notification, col(Notification.id) == Delivery.notification_id)
        .where(wanted)
        .order_by(col(DeliveryEvent.id))
        .limit(limit)
    )
    out: list[tuple[int, StatusChange | None]] = []
    for row in session.execute(stmt).all():
        (rid, tenant, did, nid, eid, sid, flow, bid, channel, status, detail, provider) = row[:12]
        source, url, occurred, created = row[12:]
        if status in NOT_A_CHANGE:
            out.append((rid, None))
            continue
        change = StatusChange(
            rid, tenant, did, nid, eid, sid, flow, bid, channel, status, detail,
            provider, source, url, occurred or created,
        )  # fmt: skip
        out.append((rid, change))
    return out


@dataclass
class Watermark:
    """The committed position, and what is known above it (see the module's docstring)."""

    position: int
    # Ids above the position already published (or not a change).
    done: set[int] = field(default_factory=set)
    # Ids above the position not seen yet, with when they were first missed.
    missing: dict[int, float] = field(default_factory=dict)

    @property
    def read_after(self) -> int:
        """Everything above the position up to here is done or missing: read past it (and
        the missing ids), so a gap never holds back what follows it."""
        return max(self.done, default=self.position)

    def fresh(self, rows: list[tuple[int, StatusChange | None]]) -> list[StatusChange]:
        """The changes among ``rows`` not published yet."""
        return [c for rid, c in rows if c is not None and rid not in self.done]

    def settle(self, ids: list[int], now: float, grace: float) -> int:
        """Record ``ids`` as done and move over everything settled; the new position."""
        self.done.update(ids)
        top = max(self.done, default=self.position)
        for i in range(self.position + 1, top):
            if i not in self.done:
                self.missing.setdefault(i, now)
        for i in ids:
            self.missing.pop(i, None)
        while True:
            nxt = self.position + 1
            if nxt in self.done:
                self.done.discard(nxt)
            elif nxt in self.missing and now - self.missing[nxt] >= grace:
                del self.missing[nxt]  # a rolled-back insert: it will never appear
            else:
                break
            self.position = nxt
        return self.position
