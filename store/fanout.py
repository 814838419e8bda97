"""Fan an event out: one notification per flow × recipient, a pending delivery per send step.

The rows are written with Core ``INSERT``s (one per table), not the ORM: a broadcast
batch of 1,000 recipients spent most of its time building and flushing SQLModel objects.
Throttles are counted for the whole batch in one query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, func, insert, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from core.flows import Throttle, watches_engagement
from core.templates import TemplateError, render
from core.types import DeliveryStatus, new_ids, notification_workflow_id
from store.db import table
from store.models import Delivery, DeliveryEvent, Event, Flow, Notification, Subscriber, utcnow

THROTTLED = "throttled"
# Parents before children, for the foreign keys.
_ROW_ORDER = (table(Event), table(Notification), table(Delivery), table(DeliveryEvent))


@dataclass
class PendingRows:
    """A group commit's new rows, written at its end with one ``INSERT`` per table: a
    statement per event and table was a fifth of the broker consumer's CPU. Whatever reads
    these tables before the end (a throttle count, an ``exit_on`` stop, a repeated key)
    flushes them first."""

    rows: dict[Table, list[dict[str, Any]]] = field(
        default_factory=lambda: {t: [] for t in _ROW_ORDER}
    )

    def flush(self, session: Session) -> None:
        for tbl, rows in self.rows.items():
            if rows:
                self.rows[tbl] = []
                session.execute(insert(tbl), rows)


def write_rows(
    session: Session, tbl: Table, rows: list[dict[str, Any]], pending: PendingRows | None
) -> None:
    """Now, or with the group commit's other rows when ``pending`` collects them."""
    if pending is None:
        session.execute(insert(tbl), rows)
    else:
        pending.rows[tbl].extend(rows)


@dataclass(frozen=True)
class NotificationRef:
    """What starting a notification's workflow needs: no ORM row crosses into Temporal."""

    id: str
    tenant_id: str
    flow_key: str
    subscriber_id: str
    workflow_id: str
    flow: dict[str, Any]
    replay_id: str | None = None
    stop_reason: str | None = None
    broadcast_id: str | None = None

    @classmethod
    def of(cls, n: Notification) -> NotificationRef:
        return cls(
            n.id, n.tenant_id, n.flow_key, n.subscriber_id, n.workflow_id, n.flow, n.replay_id,
            n.stop_reason, n.broadcast_id,
        )  # fmt: skip


@dataclass
class PlannedNotification:
    notification: NotificationRef
    # Aligned with the flow's steps: a delivery per send step, None for a control step.
    delivery_ids: list[str | None]

    @property
    def runs(self) -> bool:
        """False when the throttle stopped it at the door: no workflow is started."""
        return self.notification.stop_reason != THROTTLED


def snapshot(flow: Flow) -> dict[str, Any]:
    """The flow as a notification keeps it: a re-dispatch runs exactly this."""
    return {
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


def fan_out(
    session: Session,
    event: Event,
    flows: list[Flow],
    subscriber_ids: list[str],
    replay_id: str | None = None,
    skip: set[str] | None = None,
    broadcast_id: str | None = None,
    pending: PendingRows | None = None,
) -> list[PlannedNotification]:
    """One notification per flow × recipient, each with a pending delivery per step.

    ``skip`` holds workflow ids that already exist (a repeated replay or broadcast batch)
    and are left out.
    """
    now = utcnow()
    notifications: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    planned: list[PlannedNotification] = []
    context = {"data": event.data, "event": {"id": event.id, "type": event.type}}
    for flow in flows:
        frozen = snapshot(flow)
        throttle_key = _throttle_key(flow, context)
        watches = watches_engagement(flow.steps)
        pairs = [
            (sid, notification_workflow_id(event.tenant_id, event.id, flow.key, sid, replay_id))
            for sid in subscriber_ids
        ]
        if skip:
            pairs = [(sid, wf) for sid, wf in pairs if wf not in skip]
        # A replay re-runs history on purpose: the throttle is for live traffic.
        room = None
        if flow.throttle is not None and replay_id is None:
            if pending is not None:
                pending.flush(session)  # the count includes this batch's notifications
            room = _room(session, flow, [sid for sid, _ in pairs], throttle_key)
        sends = [(i, s["channel"]) for i, s in enumerate(flow.steps) if "channel" in s]
        ids = iter(new_ids("ntf", len(pairs)))
        delivery_ids_left = iter(new_ids("dlv", len(pairs) * len(sends)))
        for subscriber_id, workflow_id in pairs:
            throttled = False
            if room is not None:
                throttled = room.get(subscriber_id, 0) <= 0
                room[subscriber_id] = room.get(subscriber_id, 0) - 1
            reason = THROTTLED if throttled else None
            ref = NotificationRef(
                next(ids), event.tenant_id, flow.key, subscriber_id, workflow_id, frozen,
                replay_id, reason, broadcast_id,
            )  # fmt: skip
            notifications.append(
                {
                    "id": ref.id,
                    "tenant_id": event.tenant_id,
                    "event_id": event.id,
                    "flow_key": flow.key,
                    "subscriber_id": subscriber_id,
                    "workflow_id": workflow_id,
                    "flow": frozen,
                    "replay_id": replay_id,
                    "cancellation_key": event.cancellation_key,
                    "throttle_key": throttle_key,
                    "stopped_at": now if throttled else None,
                    "stop_reason": reason,
                    "acknowledged_at": None,
                    "category": flow.category,
                    "watches_engagement": watches,
                    "broadcast_id": broadcast_id,
                    "created_at": now,
                }
            )
            status = (DeliveryStatus.SKIPPED if throttled else DeliveryStatus.PENDING).value
            delivery_ids: list[str | None] = [None] * len(flow.steps)  # None: a control step
            for index, channel in sends:
                delivery_id = next(delivery_ids_left)
                delivery_ids[index] = delivery_id
                deliveries.append(
                    {
                        "id": delivery_id,
                        "tenant_id": event.tenant_id,
                        "notification_id": ref.id,
                        "step_index": index,
                        "channel": channel,
                        "status": status,
                        "reason": reason,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                history.append(
                    {
                        "tenant_id": event.tenant_id,
                        "delivery_id": delivery_id,
                        "status": status,
                        "detail": reason,
                        "created_at": now,
                    }
                )
            planned.append(PlannedNotification(ref, delivery_ids))
    # Parents before children for the foreign keys; the columns' defaults fill the rest.
    # Tables, not entities: the ORM's bulk path costs more than the rows themselves.
    for model, rows in (
        (Notification, notifications),
        (Delivery, deliveries),
        (DeliveryEvent, history),
    ):
        if rows:
            write_rows(session, table(model), rows, pending)
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


def _room(
    session: Session, flow: Flow, subscriber_ids: list[str], key: str | None
) -> dict[str, int]:
    """How many more notifications of the flow each subscriber may get in the period.

    One query for the batch, inside the accepting transaction; on PostgreSQL the
    subscribers' rows are locked (in id order, so two batches cannot deadlock) so two
    concurrent events cannot both take the last slot (SQLite writes are serialised).
    """
    throttle = Throttle.model_validate(flow.throttle)
    ids = sorted(set(subscriber_ids))
    if not ids:
        return {}
    session.execute(
        sa_select(col(Subscriber.id))
        .where(col(Subscriber.tenant_id) == flow.tenant_id, col(Subscriber.id).in_(ids))
        .order_by(col(Subscriber.id))
        .with_for_update()
    )
    since = utcnow() - throttle.period
    used = dict(
        session.execute(
            sa_select(col(Notification.subscriber_id), func.count())
            .where(
                col(Notification.tenant_id) == flow.tenant_id,
                col(Notification.subscriber_id).in_(ids),
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
            .group_by(col(Notification.subscriber_id))
        ).all()
    )
    return {sid: throttle.limit - int(used.get(sid, 0)) for sid in ids}
