"""The append-only event store and the notifications/deliveries an event fans out to."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from core.limits import check_workflow_input
from core.metrics import EVENTS_ACCEPTED
from core.types import (
    TERMINAL_DELIVERY_STATUSES,
    DeliveryStatus,
    NotificationStatus,
    new_id,
    notification_workflow_id,
    outcome,
)
from store.db import session_scope, table
from store.deliveries import FINAL
from store.fanout import (
    NotificationRef,
    PendingRows,
    PlannedNotification,
    fan_out,
    snapshot,
    write_rows,
)
from store.flows import exiting_flows, flows_for_event
from store.models import (
    Delivery,
    Event,
    EventCreate,
    Flow,
    InlineSubscriber,
    Notification,
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


def recipient_specs(body: EventCreate) -> list[RecipientSpec]:
    """An event's ``to``, deduplicated in order; a repeated inline id keeps its last fields."""
    specs: dict[str, RecipientSpec] = {}
    for item in body.to:
        if isinstance(item, InlineSubscriber):
            values = item.to_row_values()
            values.pop("id", None)
            specs[item.id] = RecipientSpec(item.id, values)
        elif item not in specs:
            specs[item] = RecipientSpec(item)
    return list(specs.values())


@dataclass
class AcceptedEvent:
    event: Event
    notifications: list[PlannedNotification] = field(default_factory=list)
    created: bool = True
    # Running notifications this event stopped through a flow's exit_on (to wake them).
    exited: list[str] = field(default_factory=list)


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
            accepted = _insert(
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
        return counted(accepted)
    except IntegrityError:
        if not idempotency_key:
            raise
        with session_scope(engine) as session:
            prior = _load_by_key(session, tenant_id, idempotency_key, request_fingerprint)
        if prior is None:
            raise
        return prior


@dataclass
class Lookups:
    """What events accepted in one transaction share: read once per batch, not per event."""

    flows: dict[str, list[Flow]] = field(default_factory=dict)
    exits: dict[str, list[str]] = field(default_factory=dict)
    # Subscriber ids seen to exist in this transaction.
    known: set[str] = field(default_factory=set)

    def flows_for(self, session: Session, tenant_id: str, type: str) -> list[Flow]:
        if type not in self.flows:
            self.flows[type] = flows_for_event(session, tenant_id, type)
        return self.flows[type]

    def exits_for(self, session: Session, tenant_id: str, type: str) -> list[str]:
        if type not in self.exits:
            self.exits[type] = exiting_flows(session, tenant_id, type)
        return self.exits[type]


_EVENTS = table(Event)
_EVENT_COLUMNS = tuple(c.name for c in _EVENTS.columns)


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
    lookups: Lookups | None = None,
    pending: PendingRows | None = None,
) -> AcceptedEvent:
    lookups = lookups or Lookups()
    for r in recipients:
        if r.values is not None:
            upsert_subscriber(session, tenant_id, r.id, r.values)
            lookups.known.add(r.id)
    ids = [r.id for r in recipients]
    unseen = [i for i in ids if i not in lookups.known]
    if unseen:
        lookups.known |= existing_ids(session, tenant_id, unseen)
        missing = sorted(set(unseen) - lookups.known)
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
    # A Core insert, not ``session.add``: the ORM's flush of one row cost more than the row.
    # The idempotency constraint fires here, before any fan-out (in a group commit, when
    # the batch's rows are written; a violation redoes the batch an event at a time).
    write_rows(session, _EVENTS, [{c: getattr(event, c) for c in _EVENT_COLUMNS}], pending)
    accepted = AcceptedEvent(event=event)
    flows = lookups.flows_for(session, tenant_id, type)
    for flow in flows:  # refused now, rather than by Temporal at every outbox sweep
        check_workflow_input(flow.key, snapshot(flow))
    accepted.exited = _exit_running(session, event, ids, lookups, pending)
    accepted.notifications = fan_out(session, event, flows, ids, pending=pending)
    return accepted


def _exit_running(
    session: Session,
    event: Event,
    subscriber_ids: list[str],
    lookups: Lookups,
    pending: PendingRows | None = None,
) -> list[str]:
    """Stop the recipients' running notifications of flows that exit on this event type."""
    keys = lookups.exits_for(session, event.tenant_id, event.type)
    if not keys:
        return []
    if pending is not None:
        pending.flush(session)  # a notification of this batch may be one to stop
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
                for f in flows_by_type[event.type]:
                    check_workflow_input(f.key, snapshot(f))
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


def counted(accepted: AcceptedEvent) -> AcceptedEvent:
    """Count a committed new event in the metrics (a repeated key is not a new event)."""
    if accepted.created:
        EVENTS_ACCEPTED.labels(accepted.event.tenant_id, accepted.event.type).inc()
    return accepted


def used_keys(session: Session, tenant_id: str, keys: list[str]) -> set[str]:
    """Which of these idempotency keys already name a stored event (one query for a batch)."""
    if not keys:
        return set()
    stmt = select(Event.idempotency_key).where(
        Event.tenant_id == tenant_id, col(Event.idempotency_key).in_(keys)
    )
    return {k for k in session.exec(stmt).all() if k is not None}


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


def accepted_notification(session: Session, notification: Notification) -> AcceptedEvent | None:
    """One stored notification as its event's accept path planned it (to start it later)."""
    event = session.get(Event, notification.event_id)
    if event is None:
        return None
    deliveries = deliveries_by_notification(session, [notification.id])
    planned = plan_of(notification, deliveries.get(notification.id, []))
    return AcceptedEvent(event=event, notifications=[planned], created=False)


def plan_of(notification: Notification, deliveries: list[Delivery]) -> PlannedNotification:
    """A stored notification with its delivery ids aligned to its flow's steps."""
    by_step = {d.step_index: d.id for d in deliveries}
    steps = range(len(notification.flow.get("steps", [])))
    return PlannedNotification(NotificationRef.of(notification), [by_step.get(i) for i in steps])


def _load_accepted(session: Session, event: Event, *, created: bool) -> AcceptedEvent:
    accepted = AcceptedEvent(event=event, created=created)
    notifications = _notifications(session, event.id)
    deliveries = deliveries_by_notification(session, [n.id for n in notifications])
    accepted.notifications = [plan_of(n, deliveries.get(n.id, [])) for n in notifications]
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
    with session_scope(engine) as session:  # Core: the ORM's bulk-update path cost more
        session.execute(
            update(_EVENTS)
            .where(_EVENTS.c.id.in_(event_ids), _EVENTS.c.dispatched_at.is_(None))
            .values(dispatched_at=utcnow())
        )


def _notifications(session: Session, event_id: str) -> list[Notification]:
    stmt = (
        select(Notification)
        .where(Notification.event_id == event_id)
        .order_by(col(Notification.flow_key), col(Notification.subscriber_id))
    )
    return list(session.exec(stmt).all())


def deliveries_by_notification(
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
        # A delivery past pending proves the workflow runs, before the outbox's batched
        # dispatched mark (up to dispatching.outbox.MARK_EVERY later) says so.
        started = dispatched or statuses != {DeliveryStatus.PENDING}
        return NotificationStatus.RUNNING if started else NotificationStatus.PENDING
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
    deliveries = deliveries_by_notification(session, [n.id for n in notifications])
    dispatched = event.dispatched_at is not None
    return EventDetail(
        event=event,
        notifications=[
            (n, notification_status(deliveries.get(n.id, []), dispatched), deliveries.get(n.id, []))
            for n in notifications
        ],
    )
