"""Delivery state transitions; each one also appends to the delivery's history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from core.types import TERMINAL_DELIVERY_STATUSES, DeliveryStatus, new_id
from store.models import (
    Delivery,
    DeliveryEvent,
    Event,
    Notification,
    Preference,
    SandboxMessage,
    Subscriber,
    utcnow,
)


@dataclass
class DeliveryContext:
    delivery: Delivery
    notification: Notification
    event: Event
    subscriber: Subscriber | None
    preference: Preference | None


def load_context(session: Session, delivery_id: str) -> DeliveryContext | None:
    """Everything one send needs, read fresh so preferences apply as of now."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        return None
    notification = session.get(Notification, delivery.notification_id)
    assert notification is not None  # FK
    event = session.get(Event, notification.event_id)
    assert event is not None  # FK
    key = (delivery.tenant_id, notification.subscriber_id)
    return DeliveryContext(
        delivery=delivery,
        notification=notification,
        event=event,
        subscriber=session.get(Subscriber, key),
        preference=session.get(Preference, key),
    )


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

    Final states are sticky so a late duplicate (a retried activity, a second
    failure record) can never turn ``sent`` back into ``failed``.
    """
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise LookupError(f"delivery {delivery_id} does not exist")
    if is_final(delivery):
        return delivery
    for name, value in fields.items():
        setattr(delivery, name, value)
    if detail is not None:
        delivery.reason = detail[:2000]
    delivery.status = status.value
    delivery.updated_at = utcnow()
    session.add(delivery)
    session.add(
        DeliveryEvent(
            tenant_id=delivery.tenant_id,
            delivery_id=delivery.id,
            status=status.value,
            detail=None if detail is None else detail[:2000],
        )
    )
    return delivery


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
