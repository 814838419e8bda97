"""What happens to a message after the send: observations and the rule that orders them.

A delivery's status is the furthest point it reached. Stages are cumulative (a click
implies an open, an open implies delivery), so funnels never show more opens than
deliveries, and a late "delivered" after an "opened" changes nothing but the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from core.types import DeliveryStatus


class Kind(StrEnum):
    """What an observation says; stored as a delivery event's status."""

    PROCESSED = "processed"  # the provider queued it (no status change)
    SENT = "sent"  # the provider handed it on (no status change after the send)
    DEFERRED = "deferred"  # a temporary refusal; the provider retries (history only)
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    COMPLAINED = "complained"  # a spam report: delivered, and the address is suppressed
    UNSUBSCRIBED = "unsubscribed"


class Source(StrEnum):
    SENDGRID = "sendgrid"
    TWILIO = "twilio"
    PIXEL = "pixel"
    LINK = "link"
    APP = "app"
    WEBHOOK = "webhook"
    UNSUBSCRIBE = "unsubscribe"


# Timestamp columns of a delivery, one per stage; each is set once, the first time.
STAGES = ("delivered", "opened", "clicked", "bounced", "failed", "unsubscribed", "complained")

# Which stages an observation reaches (an open implies delivery, a click an open).
REACHES: dict[Kind, tuple[str, ...]] = {
    Kind.DELIVERED: ("delivered",),
    Kind.OPENED: ("delivered", "opened"),
    Kind.CLICKED: ("delivered", "opened", "clicked"),
    Kind.BOUNCED: ("bounced",),
    Kind.UNDELIVERED: ("bounced",),
    Kind.FAILED: ("failed",),
    Kind.COMPLAINED: ("delivered", "complained"),
    Kind.UNSUBSCRIBED: ("delivered", "unsubscribed"),
}

# Furthest point wins. A refusal after "delivered" (an asynchronous bounce) counts;
# engagement proves the message arrived, so nothing moves a status back from it.
RANK: dict[DeliveryStatus, int] = {
    DeliveryStatus.SENT: 1,
    DeliveryStatus.DELIVERED: 2,
    DeliveryStatus.BOUNCED: 3,
    DeliveryStatus.UNDELIVERED: 3,
    DeliveryStatus.FAILED: 3,
    DeliveryStatus.OPENED: 4,
    DeliveryStatus.CLICKED: 5,
}

STATUS_OF: dict[Kind, DeliveryStatus] = {
    Kind.DELIVERED: DeliveryStatus.DELIVERED,
    Kind.OPENED: DeliveryStatus.OPENED,
    Kind.CLICKED: DeliveryStatus.CLICKED,
    Kind.BOUNCED: DeliveryStatus.BOUNCED,
    Kind.UNDELIVERED: DeliveryStatus.UNDELIVERED,
    Kind.FAILED: DeliveryStatus.FAILED,
    Kind.COMPLAINED: DeliveryStatus.DELIVERED,
    Kind.UNSUBSCRIBED: DeliveryStatus.DELIVERED,
}

# Engagement a flow can wait for or be skipped by (`wait until`, `unless`).
ENGAGEMENT = ("delivered", "opened", "clicked")


def furthest(current: DeliveryStatus, kind: Kind) -> DeliveryStatus:
    """The status after ``kind`` is observed on a sent delivery at ``current``."""
    new = STATUS_OF.get(kind)
    if new is None or current not in RANK:
        return current
    return new if RANK[new] > RANK[current] else current


def implied(stage: str) -> tuple[str, ...]:
    """``opened`` also means ``delivered``: the stages a wait or an `unless` is met by."""
    order = ENGAGEMENT[: ENGAGEMENT.index(stage) + 1] if stage in ENGAGEMENT else (stage,)
    return tuple(order)


@dataclass(frozen=True)
class Observation:
    """One report about a delivery, from a provider callback, the pixel, a link or an app."""

    kind: Kind
    source: Source
    delivery_id: str | None = None
    # Fallback when the callback carries no delivery id (SendGrid's sg_message_id prefix).
    provider_message_id: str | None = None
    # The tenant the callback claims, checked against the delivery's.
    tenant_id: str | None = None
    # The provider's own id for this event (sg_event_id, MessageSid:status): counted once.
    external_id: str | None = None
    occurred_at: datetime | None = None
    url: str | None = None
    detail: str | None = None
    # A hard bounce or a spam report: the address is suppressed for later emails.
    suppress: bool = False
