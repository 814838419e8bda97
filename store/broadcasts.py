"""Broadcasts: one message to an audience, enrolled batch by batch with a committed cursor.

A broadcast stores one event in the event store (its data, its type) and, per recipient,
a notification with its deliveries, exactly as an API event would. Enrolling a batch is
one transaction that also moves the cursor, so a crash repeats at most the batch in
flight, and a repeated batch skips the recipients it already enrolled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import StringConstraints
from sqlalchemy import JSON, UniqueConstraint, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from core.audience import Audience
from core.preferences import HHMM
from core.types import DeliveryStatus, new_id, notification_workflow_id
from store.events import deliveries_by_notification, plan_of, stop_notifications
from store.fanout import PlannedNotification, fan_out
from store.flows import flows_for_event, get_flow
from store.models import Delivery, Event, Flow, Notification, UTCDateTime, utcnow
from store.topics import audience_count, topic_exists


class BroadcastStatus:
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


class Broadcast(SQLModel, table=True):
    __tablename__ = "broadcasts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_broadcasts_idempotency"),
    )
    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(max_length=64)
    idempotency_key: str | None = Field(default=None, max_length=255)
    event_id: str = Field(max_length=64)
    event_type: str = Field(max_length=128)
    # The flows it runs: the one named, or every flow of the event type at creation.
    flow_keys: list[str] = Field(default_factory=list, sa_type=JSON)
    audience: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    send_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # HH:MM: each recipient gets it at this time in their own timezone (after send_at).
    local_time: str | None = Field(default=None, max_length=5)
    status: str = Field(default=BroadcastStatus.RUNNING, max_length=16)
    workflow_id: str = Field(max_length=512)
    # Audience members matching the filter when it was created (opt-outs included).
    total: int = 0
    # Progress, committed with each batch: the last member scanned, and what it came to.
    cursor: str | None = Field(default=None, max_length=128)
    scanned: int = 0
    enrolled: int = 0
    opted_out: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


@dataclass
class Enrolled:
    """What one batch enrolled: the notifications to start, and where the next begins."""

    event: Event
    planned: list[PlannedNotification] = field(default_factory=list)
    # Already enrolled by an earlier try of this batch: started again, idempotently.
    again: list[PlannedNotification] = field(default_factory=list)
    next_after: str | None = None
    scanned: int = 0
    opted_out: int = 0


def create_broadcast(
    session: Session,
    tenant_id: str,
    *,
    event_type: str,
    flows: list[Flow],
    audience: dict[str, Any],
    data: dict[str, Any],
    total: int,
    send_at: datetime | None,
    idempotency_key: str | None,
    workflow_id_for: Any,
    local_time: str | None = None,
) -> tuple[Broadcast, bool]:
    """Store the broadcast and its event; a repeated idempotency key returns the first."""
    if idempotency_key is not None:
        prior = by_key(session, tenant_id, idempotency_key)
        if prior is not None:
            return prior, False
    broadcast_id = new_id("bct")
    event = Event(
        id=new_id("evt"),
        tenant_id=tenant_id,
        type=event_type,
        data=data,
        fingerprint=broadcast_id,
        # The broadcast workflow starts its notifications; the outbox sweep must not.
        dispatched_at=utcnow(),
    )
    row = Broadcast(
        id=broadcast_id,
        tenant_id=tenant_id,
        idempotency_key=idempotency_key,
        event_id=event.id,
        event_type=event_type,
        flow_keys=[f.key for f in flows],
        audience=audience,
        send_at=send_at,
        local_time=local_time,
        status=(
            BroadcastStatus.SCHEDULED
            if send_at is not None or local_time is not None
            else BroadcastStatus.RUNNING
        ),
        workflow_id=workflow_id_for(broadcast_id),
        total=total,
    )
    session.add(event)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        prior = by_key(session, tenant_id, idempotency_key or "")
        if prior is None:
            raise
        return prior, False
    return row, True


class BroadcastError(ValueError):
    """A broadcast request names something that does not exist; ``field`` says which."""

    def __init__(self, field: list[str], message: str) -> None:
        super().__init__(message)
        self.field = field


def check_broadcast(
    session: Session, tenant_id: str, body: BroadcastCreate, audience: Audience
) -> list[Flow]:
    """The flows a broadcast request runs; BroadcastError names what does not exist."""
    flows = resolve_flows(session, tenant_id, body.flow, body.event_type)
    if not flows:
        field = "flow" if body.flow is not None else "event_type"
        raise BroadcastError([field], f"no flow for {body.flow or body.event_type!r}")
    if not topic_exists(session, tenant_id, audience.topic):
        raise BroadcastError(["audience", "topic"], f"topic {audience.topic!r} does not exist")
    return flows


def open_broadcast(
    session: Session,
    tenant_id: str,
    body: BroadcastCreate,
    audience: Audience,
    *,
    idempotency_key: str | None,
    workflow_id_for: Any,
) -> tuple[Broadcast, bool]:
    """Check the flows and the topic, count the audience, store the broadcast."""
    flows = check_broadcast(session, tenant_id, body, audience)
    return create_broadcast(
        session,
        tenant_id,
        event_type=flows[0].event_type,
        flows=flows,
        audience=audience.model_dump(mode="json"),
        data=body.data,
        total=audience_count(session, tenant_id, audience),
        send_at=None if body.send_at is None else body.send_at.astimezone(UTC),
        idempotency_key=idempotency_key,
        workflow_id_for=workflow_id_for,
        local_time=body.local_time,
    )


def by_key(session: Session, tenant_id: str, key: str) -> Broadcast | None:
    return session.exec(
        select(Broadcast).where(Broadcast.tenant_id == tenant_id, Broadcast.idempotency_key == key)
    ).first()


def get_broadcast(session: Session, tenant_id: str, broadcast_id: str) -> Broadcast | None:
    row = session.get(Broadcast, broadcast_id)
    return row if row is not None and row.tenant_id == tenant_id else None


def broadcast_flows(session: Session, row: Broadcast) -> list[Flow]:
    """The flows as they are now (a running notification keeps its own snapshot)."""
    flows = [get_flow(session, row.tenant_id, k) for k in row.flow_keys]
    return [f for f in flows if f is not None]


def resolve_flows(
    session: Session, tenant_id: str, flow: str | None, event_type: str | None
) -> list[Flow]:
    if flow is not None:
        found = get_flow(session, tenant_id, flow)
        return [] if found is None else [found]
    return flows_for_event(session, tenant_id, event_type or "")


def enroll(
    session: Session,
    row: Broadcast,
    subscriber_ids: list[str],
    *,
    next_after: str | None,
    scanned: int,
    opted_out: int,
) -> Enrolled:
    """Create the batch's notifications (skipping those a crashed try made) and commit progress."""
    event = session.get(Event, row.event_id)
    assert event is not None
    flows = broadcast_flows(session, row)
    wanted = {
        notification_workflow_id(row.tenant_id, event.id, f.key, sid)
        for f in flows
        for sid in subscriber_ids
    }
    done = (
        set(
            session.exec(
                select(Notification.workflow_id).where(col(Notification.workflow_id).in_(wanted))
            ).all()
        )
        if wanted
        else set()
    )
    result = Enrolled(event=event, next_after=next_after, scanned=scanned, opted_out=opted_out)
    result.planned = fan_out(session, event, flows, subscriber_ids, skip=done, broadcast_id=row.id)
    if done:
        result.again = _planned(session, done)
    session.execute(
        update(Broadcast)
        .where(col(Broadcast.id) == row.id)
        .values(
            cursor=next_after,
            scanned=Broadcast.scanned + scanned,
            enrolled=Broadcast.enrolled + len(result.planned),
            opted_out=Broadcast.opted_out + opted_out,
            updated_at=utcnow(),
        )
    )
    return result


def _planned(session: Session, workflow_ids: set[str]) -> list[PlannedNotification]:
    notifications = session.exec(
        select(Notification).where(col(Notification.workflow_id).in_(workflow_ids))
    ).all()
    deliveries = deliveries_by_notification(session, [n.id for n in notifications])
    return [plan_of(n, deliveries.get(n.id, [])) for n in notifications]


def set_status(session: Session, broadcast_id: str, status: str) -> None:
    values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
    if status in (BroadcastStatus.CANCELLED, BroadcastStatus.COMPLETED):
        values["finished_at"] = utcnow()
    session.execute(
        update(Broadcast)
        .where(
            col(Broadcast.id) == broadcast_id,
            col(Broadcast.status).not_in([BroadcastStatus.CANCELLED, BroadcastStatus.COMPLETED]),
        )
        .values(**values)
    )


def cancel_pending(session: Session, broadcast_id: str) -> list[tuple[str, str]]:
    """Stop the broadcast's notifications that have not finished: their sends are skipped."""
    return stop_notifications(
        session, "broadcast cancelled", col(Notification.broadcast_id) == broadcast_id
    )


@dataclass
class Counts:
    sent: int = 0
    failed: int = 0
    pending: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


_SENT = {s.value for s in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.OPENED)}
_SENT.add(DeliveryStatus.CLICKED.value)
_FAILED = {DeliveryStatus.FAILED.value, DeliveryStatus.BOUNCED.value}
_FAILED.add(DeliveryStatus.UNDELIVERED.value)


def counts(session: Session, broadcast_id: str) -> Counts:
    """Deliveries of the broadcast by outcome; skipped ones by reason. One grouped query."""
    stmt = (
        sa_select(col(Delivery.status), col(Delivery.reason), func.count())
        .join(Notification, col(Notification.id) == Delivery.notification_id)
        .where(col(Notification.broadcast_id) == broadcast_id)
        .group_by(col(Delivery.status), col(Delivery.reason))
    )
    out = Counts()
    for status, reason, n in session.execute(stmt).all():
        if status in _SENT:
            out.sent += n
        elif status in _FAILED:
            out.failed += n
        elif status == DeliveryStatus.SKIPPED.value:
            key = reason or "skipped"
            out.skipped[key] = out.skipped.get(key, 0) + n
        else:
            out.pending += n
    return out


# --- API shapes -----------------------------------------------------------------------


class BroadcastCreate(SQLModel):
    """Exactly one of ``event_type`` (every flow of it) or ``flow``."""

    event_type: str | None = Field(default=None, max_length=128)
    flow: str | None = Field(default=None, max_length=128)
    audience: dict[str, Any]
    data: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    send_at: datetime | None = None
    # HH:MM: at this time in each recipient's timezone (after send_at).
    local_time: Annotated[str, StringConstraints(pattern=HHMM)] | None = None


class BroadcastCounts(SQLModel):
    sent: int
    failed: int
    pending: int
    skipped: dict[str, int]


class BroadcastPublic(SQLModel):
    id: str
    status: str
    event_type: str
    event_id: str
    flows: list[str]
    audience: dict[str, Any]
    send_at: datetime | None
    local_time: str | None
    total: int
    scanned: int
    enrolled: int
    counts: BroadcastCounts
    workflow_id: str
    created_at: datetime
    finished_at: datetime | None


def public(session: Session, row: Broadcast) -> BroadcastPublic:
    c = counts(session, row.id)
    skipped = dict(c.skipped)
    if row.opted_out:
        skipped["opted out of the topic"] = row.opted_out
    return BroadcastPublic(
        id=row.id,
        status=row.status,
        event_type=row.event_type,
        event_id=row.event_id,
        flows=row.flow_keys,
        audience=row.audience,
        send_at=row.send_at,
        local_time=row.local_time,
        total=row.total,
        scanned=row.scanned,
        enrolled=row.enrolled,
        counts=BroadcastCounts(sent=c.sent, failed=c.failed, pending=c.pending, skipped=skipped),
        workflow_id=row.workflow_id,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )
