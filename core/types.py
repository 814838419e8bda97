"""Enums and ids shared across the API, workflows and activities."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from enum import StrEnum


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    WEBHOOK = "webhook"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    # Waiting for its time: quiet hours or a send window (see Delivery.scheduled_for).
    SCHEDULED = "scheduled"
    SENT = "sent"
    SKIPPED = "skipped"
    FAILED = "failed"
    # After the send, reported by providers, the tracking pixel and links, or apps.
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    UNDELIVERED = "undelivered"


# Statuses the send path never leaves (but for a person's retry of a failure).
TERMINAL_DELIVERY_STATUSES = frozenset(DeliveryStatus) - {
    DeliveryStatus.PENDING,
    DeliveryStatus.SCHEDULED,
}
# A message that reached the provider and was not refused later.
REACHED = frozenset(
    {DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.OPENED, DeliveryStatus.CLICKED}
)
FAILURES = frozenset({DeliveryStatus.FAILED, DeliveryStatus.BOUNCED, DeliveryStatus.UNDELIVERED})


class NotificationStatus(StrEnum):
    """Shown in the API and as the ``HeraldStatus`` search attribute."""

    PENDING = "pending"
    RUNNING = "running"
    SENT = "sent"
    SKIPPED = "skipped"
    FAILED = "failed"


def outcome(statuses: Iterable[DeliveryStatus]) -> NotificationStatus:
    """A finished notification's status: any failure wins, then any send, else skipped.

    The workflow reports it as ``HeraldStatus``; the API derives it from the rows.
    """
    seen = set(statuses)
    if seen & FAILURES:
        return NotificationStatus.FAILED
    if seen & REACHED:
        return NotificationStatus.SENT
    return NotificationStatus.SKIPPED


# Registered on the dev server (`make run`, tests) and on production namespaces.
SEARCH_ATTRIBUTES: dict[str, str] = {
    "HeraldTenant": "Keyword",
    "HeraldEventType": "Keyword",
    "HeraldFlow": "Keyword",
    "HeraldSubscriber": "Keyword",
    "HeraldStatus": "Keyword",
    "HeraldReplay": "Keyword",
    "HeraldBroadcast": "Keyword",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def new_ids(prefix: str, n: int) -> list[str]:
    """``n`` ids like ``new_id``'s from one read of the OS's random source, not ``n``."""
    raw = os.urandom(16 * n).hex()
    return [f"{prefix}_{raw[i : i + 32]}" for i in range(0, 32 * n, 32)]


def notification_workflow_id(
    tenant_id: str, event_id: str, flow_key: str, subscriber_id: str, replay_id: str | None = None
) -> str:
    """Derived from the business key so a repeated start finds the same workflow."""
    base = f"notification/{tenant_id}/{event_id}/{flow_key}/{subscriber_id}"
    return base if replay_id is None else f"{base}/replay/{replay_id}"


def digest_workflow_id(
    tenant_id: str,
    flow_key: str,
    subscriber_id: str,
    key: str | None,
    replay_id: str | None = None,
) -> str:
    """One open digest per (flow, subscriber, key); the key is hashed, it may hold anything."""
    part = "-" if not key else hashlib.sha256(key.encode()).hexdigest()[:24]
    base = f"digest/{tenant_id}/{flow_key}/{subscriber_id}/{part}"
    return base if replay_id is None else f"{base}/replay/{replay_id}"


def broadcast_workflow_id(tenant_id: str, broadcast_id: str) -> str:
    return f"broadcast/{tenant_id}/{broadcast_id}"
