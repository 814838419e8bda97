"""The append-only event store and the notifications/deliveries an event fans out to."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from core.flows import Throttle, watches_engagement
from core.templates import TemplateError, render
from core.types import (
    TERMINAL_DELIVERY_STATUSES,
    DeliveryStatus,
    NotificationStatus,
    new_id,
    notification_workflow_id,
    outcome,
)
from store.db import session_scope
from store.deliveries import FINAL
from store.flows import exiting_flows, flows_for_event
from store.models import (
    Delivery,
    DeliveryEvent,
    Event,
    Flow,
    Notification,
    Subscriber,
    utcnow,
)
from store.subscribers import existing_ids, upsert_subscriber


class UnknownSubscribersError(Exception):
    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"unknown subscriber ids: {', '.join(ids)}")
        self.ids = ids


class IdempotencyConflictError(Exception):
    """The key was used before with a different request body."""


@dataclass(frozen=True)
class RecipientSpec:
    id: str
    # Inline subscriber fields to upsert before the event is stored (None: must already exist).
    values: dict[str, Any] | None = None


@dataclass
class PlannedNotification:
    notification: Notification
    # Aligned with the flow's steps: a delivery per send step, None for a control step.
    delivery_ids: list[str | None]

    @property
    def runs(self) -> bool:
        """False when the throttle stopped it at the door: no workflow is started."""
        return self.notification.stop_reason != THROTTLED


@dataclass
class AcceptedEvent:
    event: Event
    notifications: list[PlannedNotification] = field(default_factory=list)
    created: bool = True
    # Running notifications this event stopped through a flow's exit_on (to wake them).
    exited: list[str] = field(default_factory=list)


THROTTLED = "throttled"


def fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def accept_event(
    engine: Engine,
    tenant_id: str,
    *,
    type: str,
    data: dict[str, Any],
    actor: str | None,
    recipients: list[RecipientSpec],
    idempotency_key: str | None,
    request_fingerprint: str,
    cancellation_key: str | None = None,
) -> AcceptedEvent:
    """Store the event with its notifications and pending deliveries in one transaction.

    All or nothing: an unknown recipient stores nothing. A repeated idempotency
    key returns what the first request stored, even when both raced.
    """
    try:
        with session_scope(engine) as session:
            if idempotency_key:
                prior = _load_by_key(session, tenant_id, idempotency_key, request_fingerprint)
                if prior is not None:
                    return prior
            return _insert(
                session,
                tenant_id,
                type,
                data,
                actor,
                recipients,
                idempotency_key,
                request_fingerprint,
                cancellation_key,
            )
    except IntegrityError:
        if not idempotency_key:
            raise
        with session_scope(engine) as session:
            prior = _load_by_key(session, tenant_id, idempotency_key, request_fingerprint)
        if prior is None:
            raise
        return prior


def _insert(
    session: Session,
    tenant_id: str,
    type: str,
    data: dict[str, Any],
    actor: str | None,
    recipients: list[RecipientSpec],
    idempotency_key: str | None,
    request_fingerprint: str,
    cancellation_key: str | None = None,
) -> AcceptedEvent:
    for r in recipients:
        if r.values is not None:
            upsert_subscriber(session, tenant_id, r.id, r.values)
    ids = [r.id for r in recipients]
    missing = sorted(set(ids) - existing_ids(session, tenant_id, ids))
    if missing:
        raise UnknownSubscribersError(missing)

    event = Event(
        id=new_id("evt"),
        tenant_id=tenant_id,
        type=type,
        data=data,
        actor=actor,
        recipients=ids,
        idempotency_key=idempotency_key,
        fingerprint=request_fingerprint,
        cancellation_key=cancellation_key,
    )
    session.add(event)
    session.flush()  # the idempotency constraint fires here, before any fan-out
    accepted = AcceptedEvent(event=event)
    flows = list(
        session.exec(
            select(Flow)
            .where(Flow.tenant_id == tenant_id, Flow.event_type == type)
            .order_by(col(Flow.key))
        ).all()
    )
    accepted.exited = _exit_running(session, event, ids)
    accepted.notifications = fan_out(session, event, flows, ids)
    return accepted


def _exit_running(session: Session, event: Event, subscriber_ids: list[str]) -> list[str]:
    """Stop the recipients' running notifications of flows that exit on this event type."""
    keys = exiting_flows(session, event.tenant_id, event.type)
    if not keys:
        return []
    stopped = stop_notifications(
        session,
        exit_reason(event),
        col(Notification.tenant_id) == event.tenant_id,
        col(Notification.subscriber_id).in_(subscriber_ids),
        col(Notification.flow_key).in_(keys),
    )
    return [wf for _, wf in stopped]


def exit_reason(event: Event) -> str:
    return f"exited: {event.type} event {event.id}"


def stop_notifications(session: Session, reason: str, *where: Any) -> list[tuple[str, str]]:
    """Mark matching unfinished notifications stopped; their workflows skip what is left.

    Returns (notification id, workflow id) pairs, to wake the workflows with a signal;
    the mark alone is enough for correctness, since every step checks it first.
    """
    unfinished = (
        select(Delivery.id)
        .where(
            col(Delivery.notification_id) == Notification.id,
            col(Delivery.status).not_in(FINAL),
        )
        .exists()
    )
    stmt = (
        update(Notification)
        .where(*where, col(Notification.stopped_at).is_(None), unfinished)
        .values(stopped_at=utcnow(), stop_reason=reason[:255])
        .returning(col(Notification.id), col(Notification.workflow_id))
        .execution_options(synchronize_session=False)
    )
    return [(n, wf) for n, wf in session.execute(stmt).all()]


def _throttled(session: Session, flow: Flow, subscriber_id: str, key: str | None) -> bool:
    """Whether the subscriber already had ``limit`` notifications of the flow in the period.

    Runs inside the accepting transaction; on PostgreSQL the subscriber row is locked so
    two concurrent events cannot both take the last slot (SQLite writes are serialised).
    """
    throttle = Throttle.model_validate(flow.throttle)
    session.execute(
        sa_select(col(Subscriber.id))
        .where(col(Subscriber.tenant_id) == flow.tenant_id, col(Subscriber.id) == subscriber_id)
        .with_for_update()
    )
    since = utcnow() - throttle.period
    count = session.execute(
        sa_select(func.count())
        .select_from(Notification)
        .where(
            col(Notification.tenant_id) == flow.tenant_id,
            col(Notification.subscriber_id) == subscriber_id,
            col(Notification.flow_key) == flow.key,
            col(Notification.throttle_key).is_(None)
            if key is None
            else col(Notification.throttle_key) == key,
            col(Notification.created_at) >= since,
            col(Notification.replay_id).is_(None),
            or_(
                col(Notification.stop_reason).is_(None),
                col(Notification.stop_reason) != THROTTLED,
            ),
        )
    ).scalar_one()
    return int(count) >= throttle.limit


def fan_out(
    session: Session,
    event: Event,
    flows: list[Flow],
    subscriber_ids: list[str],
    replay_id: str | None = None,
    skip: set[str] | None = None,
    broadcast_id: str | None = None,
) -> list[PlannedNotification]:
    """One notification per flow × recipient, each with a pending delivery per step.

    ``skip`` holds workflow ids that already exist (a repeated replay or broadcast batch)
    and are left out.
    """
    notifications: list[Notification] = []
    deliveries: list[Delivery] = []
    history: list[DeliveryEvent] = []
    planned: list[PlannedNotification] = []
    context = {"data": event.data, "event": {"id": event.id, "type": event.type}}
    for flow in flows:
        snapshot = {
            "key": flow.key,
            "event_type": flow.event_type,
            "category": flow.category,
            "critical": flow.critical,
            "steps": flow.steps,
            "version": flow.version,
            "throttle": flow.throttle,
            "exit_on": flow.exit_on or [],
            "default_locale": flow.default_locale,
        }
        throttle_key = _throttle_key(flow, context)
        watches = watches_engagement(flow.steps)
        for subscriber_id in subscriber_ids:
            workflow_id = notification_workflow_id(
                event.tenant_id, event.id, flow.key, subscriber_id, replay_id
            )
            if skip and workflow_id in skip:
                continue
            # A replay re-runs history on purpose: the throttle is for live traffic.
            throttled = (
                flow.throttle is not None
                and replay_id is None
                and _throttled(session, flow, subscriber_id, throttle_key)
            )
            notification = Notification(
                id=new_id("ntf"),
                tenant_id=event.tenant_id,
                event_id=event.id,
                flow_key=flow.key,
                subscriber_id=subscriber_id,
                workflow_id=workflow_id,
                flow=snapshot,
                replay_id=replay_id,
                cancellation_key=event.cancellation_key,
                throttle_key=throttle_key,
                stopped_at=utcnow() if throttled else None,
                stop_reason=THROTTLED if throttled else None,
                category=flow.category,
                watches_engagement=watches,
                broadcast_id=broadcast_id,
            )
            notifications.append(notification)
            status = DeliveryStatus.SKIPPED if throttled else DeliveryStatus.PENDING
            delivery_ids: list[str | None] = []
            for index, step in enumerate(flow.steps):
                if "channel" not in step:
                    delivery_ids.append(None)  # a control step: nothing is delivered
                    continue
                delivery = Delivery(
                    id=new_id("dlv"),
                    tenant_id=event.tenant_id,
                    notification_id=notification.id,
                    step_index=index,
                    channel=step["channel"],
                    status=status.value,
                    reason=THROTTLED if throttled else None,
                )
                delivery_ids.append(delivery.id)
                deliveries.append(delivery)
                history.append(
                    DeliveryEvent(
                        tenant_id=event.tenant_id,
                        delivery_id=delivery.id,
                        status=status.value,
                        detail=delivery.reason,
                    )
                )
            planned.append(PlannedNotification(notification, delivery_ids))
            if throttled:
                # Flushed now so the next recipient's (or a duplicate's) count sees it.
                session.add(notification)
    # No ORM relationships, so flush parents before children for the foreign keys.
    for batch in (notifications, deliveries, history):
        session.add_all(batch)
        session.flush()
    return planned


def _throttle_key(flow: Flow, context: dict[str, Any]) -> str | None:
    if not flow.throttle or not flow.throttle.get("key"):
        return None
    try:
        rendered = render(flow.throttle["key"], context)
    except TemplateError:
        # E.g. {{ data.project.id }} without data.project: counted as key-less, like an
        # empty key, rather than refusing (and losing) the whole event with a 500.
        return None
    return rendered.strip()[:255] or None


@dataclass
class ReplayPlan:
    replay_id: str
    # Events with the notifications this replay started (empty for a dry run).
    accepted: list[AcceptedEvent] = field(default_factory=list)
    # (event id, flow, subscriber id, workflow id, already replayed) for every pair matched.
    pairs: list[tuple[str, str, str, str, bool]] = field(default_factory=list)


def replay_events(
    engine: Engine,
    tenant_id: str,
    *,
    replay_id: str,
    event_id: str | None = None,
    type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    flow: Flow | None = None,
    dry_run: bool = False,
    limit: int = 1000,
) -> ReplayPlan:
    """Run stored events through today's flows (or one flow) again, as new notifications.

    Idempotent per (event, flow, recipient, replay id): the workflow id carries the
    replay id, and pairs that already have one are reported, not started again.
    """
    plan = ReplayPlan(replay_id=replay_id)
    with session_scope(engine) as session:
        stmt = select(Event).where(Event.tenant_id == tenant_id)
        if event_id is not None:
            stmt = stmt.where(Event.id == event_id)
        if type is not None:
            stmt = stmt.where(Event.type == type)
        if since is not None:
            stmt = stmt.where(Event.received_at >= since)
        if until is not None:
            stmt = stmt.where(Event.received_at < until)
        events = session.exec(stmt.order_by(col(Event.received_at)).limit(limit)).all()
        flows_by_type: dict[str, list[Flow]] = {}
        for event in events:
            if event.type not in flows_by_type:
                flows_by_type[event.type] = (
                    [flow]
                    if flow is not None and flow.event_type == event.type
                    else []
                    if flow is not None
                    else flows_for_event(session, tenant_id, event.type)
                )
            flows = flows_by_type[event.type]
            wanted = {
                notification_workflow_id(tenant_id, event.id, f.key, sid, replay_id): (f.key, sid)
                for f in flows
                for sid in event.recipients
            }
            done = (
                set(
                    session.exec(
                        select(Notification.workflow_id).where(
                            col(Notification.workflow_id).in_(list(wanted))
                        )
                    ).all()
                )
                if wanted
                else set()
            )
            plan.pairs.extend(
                (event.id, f_key, sid, wf, wf in done) for wf, (f_key, sid) in wanted.items()
            )
            if dry_run or len(done) == len(wanted):
                continue
            planned = fan_out(session, event, flows, event.recipients, replay_id, done)
            plan.accepted.append(AcceptedEvent(event=event, notifications=planned, created=True))
    return plan


def _load_by_key(
    session: Session, tenant_id: str, key: str, request_fingerprint: str
) -> AcceptedEvent | None:
    event = session.exec(
        select(Event).where(Event.tenant_id == tenant_id, Event.idempotency_key == key)
    ).first()
    if event is None:
        return None
    if event.fingerprint != request_fingerprint:
        raise IdempotencyConflictError(
            f"idempotency key {key!r} was already used with a different request"
        )
    return _load_accepted(session, event, created=False)


def _load_accepted(session: Session, event: Event, *, created: bool) -> AcceptedEvent:
    accepted = AcceptedEvent(event=event, created=created)
    notifications = _notifications(session, event.id)
    deliveries = _deliveries_by_notification(session, [n.id for n in notifications])
    for n in notifications:
        by_step = {d.step_index: d.id for d in deliveries.get(n.id, [])}
        ids = [by_step.get(i) for i in range(len(n.flow.get("steps", [])))]
        accepted.notifications.append(PlannedNotification(n, ids))
    return accepted


def undispatched(engine: Engine, *, received_before: datetime, limit: int) -> list[AcceptedEvent]:
    """Events stored but never handed to Temporal: a crash, an outage, or a full queue."""
    with session_scope(engine) as session:
        events = session.exec(
            select(Event)
            .where(col(Event.dispatched_at).is_(None), Event.received_at < received_before)
            .order_by(col(Event.received_at))
            .limit(limit)
        ).all()
        return [_load_accepted(session, e, created=False) for e in events]


def mark_dispatched(engine: Engine, event_ids: list[str]) -> None:
    if not event_ids:
        return
    with session_scope(engine) as session:
        session.execute(
            update(Event)
            .where(col(Event.id).in_(event_ids), col(Event.dispatched_at).is_(None))
            .values(dispatched_at=utcnow())
        )


def _notifications(session: Session, event_id: str) -> list[Notification]:
    stmt = (
        select(Notification)
        .where(Notification.event_id == event_id)
        .order_by(col(Notification.flow_key), col(Notification.subscriber_id))
    )
    return list(session.exec(stmt).all())


def _deliveries_by_notification(
    session: Session, notification_ids: list[str]
) -> dict[str, list[Delivery]]:
    if not notification_ids:
        return {}
    stmt = (
        select(Delivery)
        .where(col(Delivery.notification_id).in_(notification_ids))
        .order_by(col(Delivery.step_index))
    )
    grouped: dict[str, list[Delivery]] = {}
    for d in session.exec(stmt).all():
        grouped.setdefault(d.notification_id, []).append(d)
    return grouped


def notification_status(deliveries: list[Delivery], dispatched: bool) -> NotificationStatus:
    statuses = {DeliveryStatus(d.status) for d in deliveries}
    if not statuses.issubset(TERMINAL_DELIVERY_STATUSES):
        return NotificationStatus.RUNNING if dispatched else NotificationStatus.PENDING
    return outcome(statuses)


@dataclass
class EventDetail:
    event: Event
    notifications: list[tuple[Notification, NotificationStatus, list[Delivery]]]


def get_event(session: Session, tenant_id: str, event_id: str) -> Event | None:
    event = session.get(Event, event_id)
    return event if event is not None and event.tenant_id == tenant_id else None


def get_event_detail(session: Session, tenant_id: str, event_id: str) -> EventDetail | None:
    event = get_event(session, tenant_id, event_id)
    if event is None:
        return None
    notifications = _notifications(session, event.id)
    deliveries = _deliveries_by_notification(session, [n.id for n in notifications])
    dispatched = event.dispatched_at is not None
    return EventDetail(
        event=event,
        notifications=[
            (n, notification_status(deliveries.get(n.id, []), dispatched), deliveries.get(n.id, []))
            for n in notifications
        ],
    )
