"""Notification-level state the orchestration reads and writes: stops, acks, digests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from core.types import DeliveryStatus
from store.deliveries import FINAL, transition
from store.events import stop_notifications
from store.models import Delivery, DigestClaim, Event, Notification, Subscriber, utcnow


def delay_context(session: Session, notification_id: str) -> tuple[str, dict[str, Any]] | None:
    """The subscriber's timezone and the event's data: what a delay's target is read from."""
    stmt = (
        sa_select(col(Subscriber.timezone), col(Event.data))
        .select_from(Notification)
        .join(Event, col(Event.id) == Notification.event_id)
        .outerjoin(
            Subscriber,
            and_(
                col(Subscriber.tenant_id) == Notification.tenant_id,
                col(Subscriber.id) == Notification.subscriber_id,
            ),
        )
        .where(col(Notification.id) == notification_id)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    timezone, data = row
    return timezone or "UTC", data


def cancel_by_key(session: Session, tenant_id: str, key: str) -> list[tuple[str, str]]:
    """Stop the tenant's unfinished notifications carrying ``key``; (id, workflow id)s."""
    return stop_notifications(
        session,
        f"cancelled by cancellation_key {key!r}",
        col(Notification.tenant_id) == tenant_id,
        col(Notification.cancellation_key) == key,
    )


def acknowledge(session: Session, tenant_id: str, notification_id: str) -> Notification | None:
    """Record the first acknowledgement; later ones change nothing."""
    row = session.get(Notification, notification_id)
    if row is None or row.tenant_id != tenant_id:
        return None
    if row.acknowledged_at is None:
        row.acknowledged_at = utcnow()
        session.add(row)
        session.flush()
    return row


def skip_unfinished(session: Session, notification_id: str, reason: str) -> list[Delivery]:
    """Skip every delivery of the notification that has not run; what ran is kept."""
    ids = session.exec(
        select(Delivery.id).where(
            Delivery.notification_id == notification_id, col(Delivery.status).not_in(FINAL)
        )
    ).all()
    return [transition(session, i, DeliveryStatus.SKIPPED, detail=reason) for i in ids]


def claim_for_digest(
    session: Session, notification_ids: list[str], claim_id: str | None = None
) -> list[str]:
    """The notifications a closing digest may take, in the order given.

    A notification is claimable while none of its deliveries has finished, it was not
    stopped and no other digest claimed it: a re-dispatched event that already went out
    in an earlier digest is dropped here, so it is never sent twice. The first claimed
    one carries the digest; the others' deliveries are skipped, pointing at it.

    With a ``claim_id`` the claim is recorded, and running it again returns what it
    took the first time: after a crash lost its completion, the others are already
    skipped, and a fresh claim would send a digest of the carrier alone.
    """
    if not notification_ids:
        return []
    if claim_id is not None:
        earlier = session.exec(
            select(DigestClaim.notification_id)
            .where(DigestClaim.claim_id == claim_id)
            .order_by(col(DigestClaim.position))
        ).all()
        if earlier:
            return list(earlier)
    finished = (
        select(Delivery.id)
        .where(col(Delivery.notification_id) == Notification.id, col(Delivery.status).in_(FINAL))
        .exists()
    )
    claimed_before = (
        select(DigestClaim.notification_id)
        .where(col(DigestClaim.notification_id) == Notification.id)
        .exists()
    )
    taken = set(
        session.exec(
            select(Notification.id).where(
                col(Notification.id).in_(notification_ids),
                or_(col(Notification.stopped_at).is_not(None), finished, claimed_before),
            )
        ).all()
    )
    claimed = [n for n in dict.fromkeys(notification_ids) if n not in taken]
    if claimed and claim_id is not None:
        session.add_all(
            DigestClaim(notification_id=n, claim_id=claim_id, position=i)
            for i, n in enumerate(claimed)
        )
    if claimed:
        carrier = claimed[0]
        for other in claimed[1:]:
            skip_unfinished(session, other, f"digested into notification {carrier}")
    return claimed


def events_in_order(session: Session, event_ids: list[str]) -> list[Event]:
    rows = {e.id: e for e in session.exec(select(Event).where(col(Event.id).in_(event_ids)))}
    return [rows[i] for i in event_ids if i in rows]


def schedule(session: Session, delivery_id: str, at: datetime, detail: str) -> Delivery:
    return transition(
        session, delivery_id, DeliveryStatus.SCHEDULED, detail=detail, scheduled_for=at
    )
