"""What retention deletes, one bounded batch per call, children before parents.

Deleted once older than the cutoff, phase by phase:

1. ``notifications`` (by ``created_at``) whose workflow has finished, each with its
   deliveries, their delivery events and tracked links, and its digest claims;
2. ``events`` (by ``received_at``) left with no notification, their idempotency keys
   with them (a key is spent once its event is gone);
3. ``sandbox_messages`` and 4. ``tracked_links`` (by ``created_at``) whose delivery is gone.

A notification counts as open, and is kept with everything it hangs on (its event
included), while any delivery has a non-final status, while a failed delivery may still
be waiting for a ``retry`` signal (dead letter), or while its broadcast is unfinished.
Kept whatever their age: analytics rollups, suppressions (an address stays suppressed),
subscribers, preferences, flows, topics, broadcast rows and the status-stream cursors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Table, and_, delete, exists, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from core.types import DeliveryStatus
from store.broadcasts import Broadcast, BroadcastStatus
from store.db import table
from store.deliveries import FINAL
from store.engagement import TrackedLink
from store.models import (
    Delivery,
    DeliveryEvent,
    DigestClaim,
    Event,
    Notification,
    SandboxMessage,
)


class Phase(StrEnum):
    NOTIFICATIONS = "notifications"
    EVENTS = "events"
    SANDBOX_MESSAGES = "sandbox_messages"
    TRACKED_LINKS = "tracked_links"


PHASES = tuple(Phase)

# A broadcast in one of these may still enroll from its event or count its notifications.
UNFINISHED_BROADCAST = (
    BroadcastStatus.SCHEDULED,
    BroadcastStatus.RUNNING,
    BroadcastStatus.PAUSED,
)


@dataclass(frozen=True)
class Cutoff:
    # Rows older than this go.
    before: datetime
    # A failed delivery that changed after this may be a dead letter still waiting.
    failed_before: datetime


@dataclass
class Purged:
    # Rows the phase picked (notifications, events, messages or links): a full batch
    # means there may be more.
    selected: int = 0
    # Rows deleted per table, children included.
    deleted: dict[str, int] = field(default_factory=dict)

    def count(self, tbl: Table, result: Any) -> None:
        if result.rowcount:
            self.deleted[tbl.name] = self.deleted.get(tbl.name, 0) + result.rowcount


def purge(session: Session, phase: Phase, cutoff: Cutoff, limit: int) -> Purged:
    """Delete up to ``limit`` rows of the phase, children first, in the caller's transaction."""
    if phase is Phase.NOTIFICATIONS:
        return _notifications(session, cutoff, limit)
    if phase is Phase.EVENTS:
        return _events(session, cutoff, limit)
    if phase is Phase.SANDBOX_MESSAGES:
        return _orphans(session, table(SandboxMessage), cutoff, limit)
    return _orphans(session, table(TrackedLink), cutoff, limit)


def finished_notifications(cutoff: Cutoff) -> Any:
    """Notifications older than the cutoff whose workflow can no longer be running."""
    still_open = (
        sa_select(col(Delivery.id))
        .where(
            col(Delivery.notification_id) == Notification.id,
            or_(
                col(Delivery.status).not_in(FINAL),
                and_(
                    col(Delivery.status) == DeliveryStatus.FAILED.value,
                    col(Delivery.updated_at) >= cutoff.failed_before,
                ),
            ),
        )
        .exists()
    )
    unfinished_broadcast = (
        sa_select(col(Broadcast.id))
        .where(
            col(Broadcast.id) == Notification.broadcast_id,
            col(Broadcast.status).in_(UNFINISHED_BROADCAST),
        )
        .exists()
    )
    return sa_select(col(Notification.id)).where(
        col(Notification.created_at) < cutoff.before, ~still_open, ~unfinished_broadcast
    )


def _notifications(session: Session, cutoff: Cutoff, limit: int) -> Purged:
    ids = list(session.execute(finished_notifications(cutoff).limit(limit)).scalars())
    out = Purged(selected=len(ids))
    if not ids:
        return out
    deliveries, events, links = table(Delivery), table(DeliveryEvent), table(TrackedLink)
    delivery_ids = sa_select(deliveries.c.id).where(deliveries.c.notification_id.in_(ids))
    for child in (events, links):
        out.count(
            child, session.execute(delete(child).where(child.c.delivery_id.in_(delivery_ids)))
        )
    out.count(
        deliveries,
        session.execute(delete(deliveries).where(deliveries.c.notification_id.in_(ids))),
    )
    claims, notifications = table(DigestClaim), table(Notification)
    out.count(claims, session.execute(delete(claims).where(claims.c.notification_id.in_(ids))))
    out.count(
        notifications,
        session.execute(delete(notifications).where(notifications.c.id.in_(ids))),
    )
    return out


def _events(session: Session, cutoff: Cutoff, limit: int) -> Purged:
    events = table(Event)
    has_notification = exists().where(col(Notification.event_id) == events.c.id)
    open_broadcast = exists().where(
        col(Broadcast.event_id) == events.c.id,
        col(Broadcast.status).in_(UNFINISHED_BROADCAST),
    )
    stmt = (
        sa_select(events.c.id)
        .where(events.c.received_at < cutoff.before, ~has_notification, ~open_broadcast)
        .limit(limit)
    )
    ids = list(session.execute(stmt).scalars())
    out = Purged(selected=len(ids))
    if ids:
        out.count(events, session.execute(delete(events).where(events.c.id.in_(ids))))
    return out


def _orphans(session: Session, tbl: Table, cutoff: Cutoff, limit: int) -> Purged:
    """Rows whose delivery is gone; those of a delivery still kept stay with it."""
    delivery_kept = exists().where(col(Delivery.id) == tbl.c.delivery_id)
    stmt = sa_select(tbl.c.id).where(tbl.c.created_at < cutoff.before, ~delivery_kept).limit(limit)
    ids = list(session.execute(stmt).scalars())
    out = Purged(selected=len(ids))
    if ids:
        out.count(tbl, session.execute(delete(tbl).where(tbl.c.id.in_(ids))))
    return out
