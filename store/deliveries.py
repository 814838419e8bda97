"""Delivery state transitions; each one also appends to the delivery's history."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from core.types import TERMINAL_DELIVERY_STATUSES, Channel, DeliveryStatus, new_id
from store.db import table
from store.engagement import Suppression
from store.models import (
    Click,
    Delivery,
    DeliveryDetail,
    DeliveryEvent,
    DeliveryEventPublic,
    Event,
    Notification,
    Preference,
    SandboxMessage,
    Subscriber,
    utcnow,
)
from store.rollups import count_failure


@dataclass
class DeliveryContext:
    delivery: Delivery
    notification: Notification
    event: Event
    subscriber: Subscriber | None
    preference: Preference | None
    # The subscriber's email address is suppressed (a hard bounce, a spam report).
    suppression: Suppression | None = None


class DeliveryGone(LookupError):
    """The delivery's row is gone (database reset, erased subscriber): nothing to record."""


# Status values a delivery never leaves (but for a person's retry of a failure).
FINAL = [s.value for s in TERMINAL_DELIVERY_STATUSES]


def load_context(session: Session, delivery_id: str) -> DeliveryContext | None:
    """Everything one send needs, in one query, read fresh so preferences apply as of now."""
    row = session.execute(_CONTEXT, {"delivery_id": delivery_id}).first()
    return None if row is None else DeliveryContext(*row)


def context_select(*, with_event: bool = True, columns: list[Any] | None = None) -> Any:
    """The joins of a delivery's context; ``columns`` selects plain columns instead."""
    entities: list[Any] = [Delivery, Notification, Subscriber, Preference, Suppression]
    if with_event:
        entities.insert(2, Event)
    stmt = (
        sa_select(*(columns or entities))
        .select_from(Delivery)
        .join(Notification, col(Notification.id) == Delivery.notification_id)
    )
    if with_event:
        stmt = stmt.join(Event, col(Event.id) == Notification.event_id)
    return (
        stmt.outerjoin(
            Subscriber,
            and_(
                col(Subscriber.tenant_id) == Delivery.tenant_id,
                col(Subscriber.id) == Notification.subscriber_id,
            ),
        )
        .outerjoin(
            Preference,
            and_(
                col(Preference.tenant_id) == Delivery.tenant_id,
                col(Preference.subscriber_id) == Notification.subscriber_id,
            ),
        )
        .outerjoin(
            Suppression,
            and_(
                col(Delivery.channel) == Channel.EMAIL.value,
                col(Suppression.tenant_id) == Delivery.tenant_id,
                col(Suppression.channel) == Channel.EMAIL.value,
                col(Suppression.address) == func.lower(Subscriber.email),
            ),
        )
    )


# Built once: building the six-table join for every send cost 338 µs against 66 µs to run
# it prebuilt (BENCHMARKS.md, "What moved the numbers").
_CONTEXT = context_select().where(col(Delivery.id) == bindparam("delivery_id"))


def engaged_before(session: Session, delivery: Delivery, stage: str) -> bool:
    """Whether an earlier send of the same notification reached ``stage`` (stored truth)."""
    column = getattr(Delivery, f"{stage}_at")
    stmt = (
        sa_select(Delivery.id)  # type: ignore[call-overload]
        .where(
            col(Delivery.notification_id) == delivery.notification_id,
            col(Delivery.step_index) < delivery.step_index,
            col(column).is_not(None),
        )
        .limit(1)
    )
    return session.execute(stmt).first() is not None


def is_final(delivery: Delivery) -> bool:
    return DeliveryStatus(delivery.status) in TERMINAL_DELIVERY_STATUSES


def transition(
    session: Session,
    delivery_id: str,
    status: DeliveryStatus,
    *,
    detail: str | None = None,
    **fields: Any,
) -> Delivery:
    """Move a delivery to ``status`` unless it already reached a final one.

    Final states are sticky, and the guard is in the UPDATE itself, so a late
    duplicate (a retried activity, a second failure record) can never turn
    ``sent`` back into ``failed``, even when two race.
    """
    delivery = try_transition(session, delivery_id, status, detail=detail, **fields)
    if delivery is None:
        current = session.get(Delivery, delivery_id)
        if current is None:
            raise DeliveryGone(f"delivery {delivery_id} does not exist")
        return current
    return delivery


_DELIVERY_EVENTS = table(DeliveryEvent)
_EVENT_COLUMNS = tuple(c.name for c in _DELIVERY_EVENTS.columns if c.name != "id")
_INSERT_EVENT = insert(_DELIVERY_EVENTS)


@functools.cache
def _transition(columns: tuple[str, ...]) -> Any:
    """The guarded ``UPDATE … RETURNING`` for one set of columns, built once: every send
    ran it, and building it each time cost more than running it."""
    return (
        update(Delivery)
        .where(col(Delivery.id) == bindparam("delivery_id"), col(Delivery.status).not_in(FINAL))
        .values({name: bindparam(f"v_{name}") for name in columns})
        .returning(Delivery)
        .execution_options(synchronize_session=False)
    )


def try_transition(
    session: Session,
    delivery_id: str,
    status: DeliveryStatus,
    *,
    detail: str | None = None,
    **fields: Any,
) -> Delivery | None:
    """``transition``, but None when the delivery was already final (or is gone)."""
    now = utcnow()
    values: dict[str, Any] = {**fields, "status": status.value, "updated_at": now}
    if detail is not None:
        values["reason"] = detail[:2000]
    if status == DeliveryStatus.FAILED:
        values["failed_at"] = now
    params = {f"v_{name}": value for name, value in values.items()}
    stmt = _transition(tuple(sorted(values)))
    delivery = session.execute(stmt, {"delivery_id": delivery_id, **params}).scalars().first()
    if delivery is None:
        return None
    # A Core insert, as ``store.events`` writes its event rows: the ORM's flush of one
    # row cost more than the row.
    row = DeliveryEvent(
        tenant_id=delivery.tenant_id,
        delivery_id=delivery.id,
        status=status.value,
        detail=None if detail is None else detail[:2000],
    )
    session.execute(_INSERT_EVENT, {c: getattr(row, c) for c in _EVENT_COLUMNS})
    if status == DeliveryStatus.FAILED:
        count_failure(session, delivery, now)
    return delivery


def reopen(session: Session, delivery_id: str, detail: str) -> Delivery | None:
    """Put a failed delivery back to pending for a retry a person asked for.

    The only way out of a final state, and only out of ``failed``: a sent
    message is never re-sent by a retry.
    """
    failed_at = session.execute(
        sa_select(Delivery.failed_at).where(  # type: ignore[call-overload]
            col(Delivery.id) == delivery_id
        )
    ).scalar()
    stmt = (
        update(Delivery)
        .where(col(Delivery.id) == delivery_id, col(Delivery.status) == DeliveryStatus.FAILED)
        .values(status=DeliveryStatus.PENDING.value, updated_at=utcnow(), failed_at=None)
        .returning(Delivery)
        .execution_options(synchronize_session=False)
    )
    delivery = session.execute(stmt).scalars().first()
    if delivery is not None:
        if failed_at is not None:  # the failure no longer counts: the retry decides
            count_failure(session, delivery, failed_at, -1)
        session.add(
            DeliveryEvent(
                tenant_id=delivery.tenant_id,
                delivery_id=delivery.id,
                status=DeliveryStatus.PENDING.value,
                detail=detail,
            )
        )
    return delivery


@dataclass
class DeadLetter:
    delivery: Delivery
    notification: Notification


def failed_deliveries(
    session: Session,
    tenant_id: str,
    *,
    status: DeliveryStatus = DeliveryStatus.FAILED,
    channel: str | None = None,
    flow: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[DeadLetter]:
    """The dead-letter view: deliveries by status, newest first, with their notification."""
    stmt = (
        sa_select(Delivery, Notification)
        .join(Notification, col(Notification.id) == Delivery.notification_id)
        .where(col(Delivery.tenant_id) == tenant_id, col(Delivery.status) == status.value)
    )
    if channel is not None:
        stmt = stmt.where(col(Delivery.channel) == channel)
    if flow is not None:
        stmt = stmt.where(col(Notification.flow_key) == flow)
    if since is not None:
        stmt = stmt.where(col(Delivery.updated_at) >= since)
    stmt = stmt.order_by(col(Delivery.updated_at).desc()).limit(limit)
    return [DeadLetter(d, n) for d, n in session.execute(stmt).all()]


def notification_for(session: Session, tenant_id: str, notification_id: str) -> Notification | None:
    row = session.get(Notification, notification_id)
    return row if row is not None and row.tenant_id == tenant_id else None


def history(session: Session, delivery_id: str) -> list[DeliveryEvent]:
    stmt = (
        select(DeliveryEvent)
        .where(DeliveryEvent.delivery_id == delivery_id)
        .order_by(col(DeliveryEvent.id))
    )
    return list(session.exec(stmt).all())


def add_sandbox_message(
    session: Session,
    *,
    tenant_id: str,
    delivery_id: str,
    channel: str,
    to: list[str],
    content: dict[str, Any],
) -> SandboxMessage:
    row = SandboxMessage(
        id=new_id("sbx"),
        tenant_id=tenant_id,
        delivery_id=delivery_id,
        channel=channel,
        to=to,
        content=content,
    )
    session.add(row)
    return row


def list_sandbox_messages(
    session: Session, tenant_id: str, *, channel: str | None = None, limit: int = 100
) -> list[SandboxMessage]:
    stmt = select(SandboxMessage).where(SandboxMessage.tenant_id == tenant_id)
    if channel is not None:
        stmt = stmt.where(SandboxMessage.channel == channel)
    stmt = stmt.order_by(col(SandboxMessage.created_at).desc()).limit(limit)
    return list(session.exec(stmt).all())


def clicks_for(session: Session, delivery_ids: list[str]) -> dict[str, list[Click]]:
    """Every click of these deliveries, oldest first, for the timelines."""
    if not delivery_ids:
        return {}
    stmt = (
        select(DeliveryEvent)
        .where(
            col(DeliveryEvent.delivery_id).in_(delivery_ids),
            DeliveryEvent.status == DeliveryStatus.CLICKED.value,
        )
        .order_by(col(DeliveryEvent.id))
    )
    out: dict[str, list[Click]] = {}
    for e in session.exec(stmt).all():
        at = e.occurred_at or e.created_at
        out.setdefault(e.delivery_id, []).append(Click(url=e.url, at=at, source=e.source))
    return out


def delivery_detail(session: Session, tenant_id: str, delivery_id: str) -> DeliveryDetail | None:
    delivery = session.get(Delivery, delivery_id)
    if delivery is None or delivery.tenant_id != tenant_id:
        return None
    n = session.get(Notification, delivery.notification_id)
    assert n is not None
    events = history(session, delivery_id)
    return DeliveryDetail(
        **delivery.model_dump(exclude={"notification_id", "tenant_id", "early_events"}),
        clicks=clicks_for(session, [delivery_id]).get(delivery_id, []),
        notification_id=n.id,
        event_id=n.event_id,
        flow=n.flow_key,
        subscriber_id=n.subscriber_id,
        workflow_id=n.workflow_id,
        timeline=[DeliveryEventPublic.model_validate(e, from_attributes=True) for e in events],
    )


def dead_letters_waiting(session: Session, since: datetime) -> dict[str, int]:
    """Failed deliveries a retry signal can still reach, by channel (for the metrics)."""
    stmt = (
        sa_select(col(Delivery.channel), func.count())
        .where(col(Delivery.status) == DeliveryStatus.FAILED.value)
        .where(col(Delivery.updated_at) >= since)
        .group_by(Delivery.channel)
    )
    return {channel: n for channel, n in session.execute(stmt).all()}
