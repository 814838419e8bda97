"""Erasing a subscriber (``DELETE /v1/subscribers/{id}``), in one transaction, with an audit.

What goes: the subscriber row (addresses, push tokens, data), their preferences and topic
memberships, their notifications and deliveries with everything hanging off them (the
delivery timelines, which hold bounce texts and clicked URLs; tracked links; sandbox copies;
digest claims), the suppressions of their addresses, and their id in stored events: an event
that was addressed to them alone goes whole, since its data was about them.

What stays: the hourly analytics rollups, which never named anyone, and an audit record that
holds a hash of the id (the id itself may be an email address).

Running workflows are stopped by the caller after the commit. One that Temporal could not be
told about finds its rows gone at its next step and ends as orphaned, once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String, cast, delete, func, or_, select
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col

from core.types import DeliveryStatus, new_id
from store.api_keys import active_key
from store.db import read_scope, session_scope
from store.engagement import Suppression, TrackedLink
from store.models import (
    Delivery,
    DeliveryEvent,
    DigestClaim,
    Event,
    Notification,
    Preference,
    SandboxMessage,
    Subscriber,
    UTCDateTime,
    utcnow,
)
from store.topics import TopicSubscriber

# A notification with such a delivery may still have a running workflow (a dead letter
# waits for a retry); the others have finished.
OPEN_STATUSES = [DeliveryStatus.PENDING, DeliveryStatus.SCHEDULED, DeliveryStatus.FAILED]
_CHUNK = 500


class SubscriberErasure(SQLModel, table=True):
    """The audit record of one erasure: who, when and how much, never whom in clear."""

    __tablename__ = "subscriber_erasures"
    __table_args__ = (Index("ix_subscriber_erasures_subject", "tenant_id", "subscriber_hash"),)
    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(max_length=64)
    # sha256 of "<tenant>\0<subscriber id>": answers "was X erased?" without keeping X.
    subscriber_hash: str = Field(max_length=64)
    # The API key that asked (None when it could not be told, e.g. a key revoked meanwhile).
    api_key_id: str | None = Field(default=None, max_length=64)
    erased_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # Rows deleted (or, for events shared with others, rewritten) by kind.
    deleted: dict[str, int] = Field(default_factory=dict, sa_type=JSON)
    # Workflows that may have been running, stopped after the commit.
    open_workflows: int = 0


class ErasurePublic(SQLModel):
    """The answer to DELETE /v1/subscribers/{id}."""

    id: str
    erased_at: datetime
    deleted: dict[str, int]
    # Running workflows terminated; those not reached (Temporal down) end as orphaned.
    workflows_stopped: int
    workflows_not_reached: int


def subscriber_hash(tenant_id: str, subscriber_id: str) -> str:
    return hashlib.sha256(f"{tenant_id}\0{subscriber_id}".encode()).hexdigest()


@dataclass
class Erased:
    record: SubscriberErasure
    # Workflows to stop once the transaction has committed.
    workflow_ids: list[str]


def erase_subscriber(
    engine: Engine, tenant_id: str, subscriber_id: str, api_key: str | None = None
) -> Erased | None:
    """Delete everything Herald holds about the subscriber; None when it holds nothing."""
    # Events that name them but started no notification are found by a scan, done before
    # the write transaction so it does not hold SQLite's write lock.
    mentioned = events_naming(engine, tenant_id, subscriber_id)
    with session_scope(engine) as session:
        return _erase(session, tenant_id, subscriber_id, mentioned, api_key)


def events_naming(engine: Engine, tenant_id: str, subscriber_id: str) -> set[str]:
    """Ids of the tenant's events whose recipients include ``subscriber_id``."""
    escaped = subscriber_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    stmt = select(col(Event.id), col(Event.recipients)).where(
        col(Event.tenant_id) == tenant_id,
        cast(col(Event.recipients), String).like(f'%"{escaped}"%', escape="\\"),
    )
    with read_scope(engine) as session:
        return {i for i, recipients in session.execute(stmt) if subscriber_id in recipients}


def _erase(
    session: Session, tenant_id: str, subscriber_id: str, mentioned: set[str], api_key: str | None
) -> Erased | None:
    deleted: dict[str, int] = {}
    # Row locks (PostgreSQL) in the order the send path takes them (notification, delivery,
    # then the subscriber, e.g. to drop a dead push token): a send recording its result
    # waits for the commit, then finds its row gone.
    theirs = (
        col(Notification.tenant_id) == tenant_id,
        col(Notification.subscriber_id) == subscriber_id,
    )
    notifications = select(col(Notification.id)).where(*theirs)
    deliveries = select(col(Delivery.id)).where(col(Delivery.notification_id).in_(notifications))
    event_ids = set(
        session.execute(select(col(Notification.event_id)).where(*theirs).with_for_update())
        .scalars()
        .all()
    )
    session.execute(deliveries.with_for_update()).all()
    subscriber = session.execute(
        select(Subscriber)
        .where(col(Subscriber.tenant_id) == tenant_id, col(Subscriber.id) == subscriber_id)
        .with_for_update()
    ).scalar_one_or_none()
    open_workflows = list(
        session.execute(
            select(col(Notification.workflow_id))
            .distinct()
            .join(Delivery, col(Delivery.notification_id) == col(Notification.id))
            .where(*theirs, col(Delivery.status).in_([s.value for s in OPEN_STATUSES]))
        )
        .scalars()
        .all()
    )
    addresses = _their_addresses(session, tenant_id, subscriber, deliveries)

    deleted["delivery_events"] = _delete(
        session, DeliveryEvent, col(DeliveryEvent.delivery_id).in_(deliveries)
    )
    deleted["tracked_links"] = _delete(
        session, TrackedLink, col(TrackedLink.delivery_id).in_(deliveries)
    )
    deleted["sandbox_messages"] = _delete(
        session,
        SandboxMessage,
        col(SandboxMessage.tenant_id) == tenant_id,
        col(SandboxMessage.delivery_id).in_(deliveries),
    )
    deleted["suppressions"] = (
        _delete(
            session,
            Suppression,
            col(Suppression.tenant_id) == tenant_id,
            col(Suppression.address).in_(addresses),
        )
        if addresses
        else 0
    )
    deleted["digest_claims"] = _delete(
        session, DigestClaim, col(DigestClaim.notification_id).in_(notifications)
    )
    deleted["deliveries"] = _delete(
        session, Delivery, col(Delivery.notification_id).in_(notifications)
    )
    deleted["notifications"] = _delete(session, Notification, *theirs)
    deleted["events"], deleted["event_recipients"] = _scrub_events(
        session, tenant_id, subscriber_id, event_ids | mentioned
    )
    deleted["preferences"] = _delete(
        session,
        Preference,
        col(Preference.tenant_id) == tenant_id,
        col(Preference.subscriber_id) == subscriber_id,
    )
    deleted["topic_memberships"] = _delete(
        session,
        TopicSubscriber,
        col(TopicSubscriber.tenant_id) == tenant_id,
        col(TopicSubscriber.subscriber_id) == subscriber_id,
    )
    deleted["push_tokens"] = 0 if subscriber is None else len(subscriber.push_tokens)
    deleted["subscriber"] = _delete(
        session,
        Subscriber,
        col(Subscriber.tenant_id) == tenant_id,
        col(Subscriber.id) == subscriber_id,
    )
    if not any(deleted.values()):
        return None
    key = None if api_key is None else active_key(session, api_key)
    record = SubscriberErasure(
        id=new_id("era"),
        tenant_id=tenant_id,
        subscriber_hash=subscriber_hash(tenant_id, subscriber_id),
        api_key_id=None if key is None else key.id,
        deleted=deleted,
        open_workflows=len(open_workflows),
    )
    session.add(record)
    session.flush()
    return Erased(record=record, workflow_ids=open_workflows)


def _delete(session: Session, model: type[SQLModel], *where: Any) -> int:
    stmt = delete(model).where(*where).execution_options(synchronize_session=False)
    result: Any = session.execute(stmt)
    return int(result.rowcount or 0)


def _their_addresses(
    session: Session, tenant_id: str, subscriber: Subscriber | None, deliveries: Any
) -> set[str]:
    """Suppressed addresses to forget: theirs, unless another subscriber has the address too
    (a shared mailbox stays protected)."""
    found = set(
        session.execute(
            select(col(Suppression.address)).where(
                col(Suppression.tenant_id) == tenant_id,
                col(Suppression.delivery_id).in_(deliveries),
            )
        )
        .scalars()
        .all()
    )
    if subscriber is not None:
        found |= {a for a in ((subscriber.email or "").lower(), subscriber.phone or "") if a}
    if not found:
        return found
    email = func.lower(col(Subscriber.email))
    shared = session.execute(
        select(email, col(Subscriber.phone)).where(
            col(Subscriber.tenant_id) == tenant_id,
            col(Subscriber.id) != (subscriber.id if subscriber else ""),
            or_(email.in_(found), col(Subscriber.phone).in_(found)),
        )
    ).all()
    return found - {a for row in shared for a in row if a}


def _scrub_events(
    session: Session, tenant_id: str, subscriber_id: str, event_ids: Iterable[str]
) -> tuple[int, int]:
    """Take the id out of the events' recipients, so a replay never re-addresses them.

    Returns (events deleted, events rewritten): an event left with no recipient and no
    notification was theirs alone and goes, its data with it.
    """
    dropped = rewritten = 0
    ids = sorted(event_ids)
    for start in range(0, len(ids), _CHUNK):
        rows = (
            session.execute(
                select(Event)
                .where(
                    col(Event.tenant_id) == tenant_id,
                    col(Event.id).in_(ids[start : start + _CHUNK]),
                )
                .order_by(col(Event.id))
                .with_for_update()
            )
            .scalars()
            .all()
        )
        for event in rows:
            if subscriber_id not in event.recipients:
                continue
            rest = [r for r in event.recipients if r != subscriber_id]
            still_used = session.execute(
                select(col(Notification.id)).where(col(Notification.event_id) == event.id).limit(1)
            ).first()
            if rest or still_used is not None:
                event.recipients = rest
                session.add(event)
                rewritten += 1
            else:
                session.delete(event)
                dropped += 1
    session.flush()
    return dropped, rewritten


def find_erasures(session: Session, tenant_id: str, subscriber_id: str) -> list[SubscriberErasure]:
    """The audit records of erasures of this id (looked up by its hash)."""
    stmt = (
        select(SubscriberErasure)
        .where(
            col(SubscriberErasure.tenant_id) == tenant_id,
            col(SubscriberErasure.subscriber_hash) == subscriber_hash(tenant_id, subscriber_id),
        )
        .order_by(col(SubscriberErasure.erased_at))
    )
    return list(session.execute(stmt).scalars().all())
