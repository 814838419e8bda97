"""Apply what providers, the pixel, links and apps report about a delivery after its send.

Every observation is stored as a delivery event (once per provider event id). The
delivery's status only moves forward (``core.lifecycle.furthest``), each stage's first
time is kept on the row, and the analytics rollups count each stage once per delivery.
Observations that arrive before the send is recorded are kept and applied when it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from core.lifecycle import REACHES, Kind, Observation, Source, furthest
from core.metrics import count_delivery
from core.types import Channel, DeliveryStatus
from store.db import session_scope, table
from store.deliveries import FINAL, DeliveryGone, try_transition
from store.engagement import suppress
from store.models import Delivery, DeliveryEvent, Notification, Subscriber, utcnow
from store.rollups import Increments, RollupKey, hour_of, rollup_key
from store.subscribers import opt_out_category

log = logging.getLogger(__name__)


@dataclass
class Reached:
    """Stages a delivery reached for the first time: its workflow may be waiting for them."""

    delivery_id: str
    notification_id: str
    workflow_id: str
    watches_engagement: bool
    stages: list[str] = field(default_factory=list)
    channel: str = ""
    provider: str | None = None


@dataclass
class Recorded:
    stored: int = 0
    duplicates: int = 0
    unknown: list[Observation] = field(default_factory=list)
    reached: list[Reached] = field(default_factory=list)


def record(session: Session, observations: list[Observation]) -> Recorded:
    """Store and apply a batch of observations in the caller's transaction."""
    result = Recorded()
    rows = _load(session, observations)
    seen = _known_external_ids(session, observations)
    incs = Increments()
    reached: dict[str, Reached] = {}
    ordered = sorted(observations, key=lambda o: o.occurred_at or utcnow())
    for obs in ordered:
        pair = _match(rows, obs)
        if pair is None:
            result.unknown.append(obs)
            continue
        delivery, notification = pair
        if obs.external_id is not None:
            ext = (obs.source.value, obs.external_id)
            if ext in seen:
                result.duplicates += 1
                continue
            seen.add(ext)
        session.add(_event_row(delivery, obs))
        result.stored += 1
        _side_effects(session, delivery, notification, obs)
        if delivery.sent_at is None and not _mark_early(session, delivery):
            continue  # applied when the send is recorded
        stages = _apply(delivery, obs, incs, notification.flow_key, notification.category)
        if stages:
            r = reached.setdefault(
                delivery.id,
                Reached(
                    delivery.id,
                    notification.id,
                    notification.workflow_id,
                    notification.watches_engagement,
                    channel=delivery.channel,
                    provider=delivery.provider,
                ),
            )
            r.stages += stages
    incs.flush(session)  # the loaded rows are in the session: their changes flush too
    session.flush()
    result.reached = list(reached.values())
    return result


def record_batch(engine: Engine, observations: list[Observation]) -> Recorded:
    """``record`` in its own transaction; a twin batch racing on an event id loses once."""
    try:
        with session_scope(engine) as session:
            recorded = record(session, observations)
    except IntegrityError:
        with session_scope(engine) as session:
            recorded = record(session, observations)
    for r in recorded.reached:  # committed: each stage counts once per delivery
        for stage in r.stages:
            count_delivery(r.channel, r.provider, stage)
    return recorded


def mark_sent(
    session: Session,
    delivery_id: str,
    *,
    flow_key: str,
    category: str,
    attempts: int,
    provider: str,
    provider_message_id: str,
    delivered: bool = False,
    incs: Increments | None = None,
) -> Delivery:
    """The provider accepted the message; count it, and apply anything heard of it early.

    A batch passes its own ``incs`` and flushes them once: one rollup upsert per batch.
    """
    now = utcnow()
    row = try_transition(
        session,
        delivery_id,
        DeliveryStatus.SENT,
        attempts=attempts,
        reason=None,
        provider=provider,
        provider_message_id=provider_message_id,
        sent_at=now,
    )
    if row is None:  # finished by an earlier attempt whose completion was lost
        current = session.get(Delivery, delivery_id)
        if current is None:
            raise DeliveryGone(f"delivery {delivery_id} does not exist")
        return current
    own = incs is None
    incs = Increments() if incs is None else incs
    key = rollup_key(row, flow_key, category)
    assert key is not None
    incs.add(key, "sent")
    pending: list[Observation] = []
    if delivered:
        pending.append(Observation(Kind.DELIVERED, Source.WEBHOOK, delivery_id, occurred_at=now))
        session.add(_event_row(row, pending[-1]))
    if row.early_events:
        pending += _stored_observations(session, delivery_id)
        row.early_events = False
    for obs in sorted(pending, key=lambda o: o.occurred_at or now):
        _apply(row, obs, incs, flow_key, category)
    session.add(row)
    if own:
        incs.flush(session)
    return row


@dataclass(frozen=True)
class Sent:
    delivery_id: str
    provider: str
    provider_message_id: str


def mark_sent_many(
    session: Session,
    sends: list[Sent],
    *,
    flow_key: str,
    category: str,
    attempts: int,
    incs: Increments,
) -> int:
    """``mark_sent`` for a broadcast batch: one UPDATE and one INSERT per provider message
    id (a SendGrid request's recipients share one), not a statement per recipient.

    The same guard holds: a delivery already final is left alone. Returns how many moved.
    """
    now = utcnow()
    groups: dict[tuple[str, str], list[str]] = {}
    for item in sends:
        groups.setdefault((item.provider, item.provider_message_id), []).append(item.delivery_id)
    moved = 0
    for (provider, message_id), ids in groups.items():
        stmt = (
            update(Delivery)
            .where(col(Delivery.id).in_(ids), col(Delivery.status).not_in(FINAL))
            .values(
                status=DeliveryStatus.SENT.value,
                attempts=attempts,
                reason=None,
                provider=provider,
                provider_message_id=message_id,
                sent_at=now,
                updated_at=now,
            )
            .returning(
                col(Delivery.id),
                col(Delivery.tenant_id),
                col(Delivery.channel),
                col(Delivery.early_events),
            )
            .execution_options(synchronize_session=False)
        )
        rows = session.execute(stmt).all()
        if not rows:
            continue
        moved += len(rows)
        session.execute(
            insert(table(DeliveryEvent)),
            [
                {
                    "tenant_id": tenant,
                    "delivery_id": delivery_id,
                    "status": DeliveryStatus.SENT.value,
                    "source": "herald",
                    "created_at": now,
                }
                for delivery_id, tenant, _, _ in rows
            ],
        )
        for delivery_id, tenant, channel, early in rows:
            key = RollupKey(tenant, hour_of(now), flow_key, channel, provider, category)
            incs.add(key, "sent")
            if early:  # heard of before the send was recorded: apply it now
                row = session.get(Delivery, delivery_id, populate_existing=True)
                assert row is not None
                for obs in sorted(_stored_observations(session, delivery_id), key=_when):
                    _apply(row, obs, incs, flow_key, category)
                row.early_events = False
                session.add(row)
    return moved


def _when(obs: Observation) -> datetime:
    return obs.occurred_at or utcnow()


# --- internals --------------------------------------------------------------------


def _load(
    session: Session, observations: list[Observation]
) -> dict[str, tuple[Delivery, Notification]]:
    """The deliveries named, by id and by provider message id, locked against a twin batch."""
    ids = {o.delivery_id for o in observations if o.delivery_id}
    pmids = {o.provider_message_id for o in observations if o.provider_message_id}
    found: dict[str, tuple[Delivery, Notification]] = {}
    for column, values in ((Delivery.id, ids), (Delivery.provider_message_id, pmids)):
        if not values:
            continue
        stmt = (
            sa_select(Delivery, Notification)
            .join(Notification, col(Notification.id) == Delivery.notification_id)
            .where(col(column).in_(sorted(values)))
            .order_by(col(Delivery.id))
            .with_for_update(of=Delivery)
        )
        for d, n in session.execute(stmt).all():
            found[d.id] = (d, n)
            if d.provider_message_id:
                found[f"pm:{d.provider_message_id}"] = (d, n)
    return found


def _match(
    rows: dict[str, tuple[Delivery, Notification]], obs: Observation
) -> tuple[Delivery, Notification] | None:
    pair = rows.get(obs.delivery_id or "") or rows.get(f"pm:{obs.provider_message_id}")
    if pair is None or (obs.tenant_id is not None and pair[0].tenant_id != obs.tenant_id):
        return None
    return pair


def _known_external_ids(session: Session, observations: list[Observation]) -> set[tuple[str, str]]:
    ext = {o.external_id for o in observations if o.external_id}
    if not ext:
        return set()
    stmt = sa_select(col(DeliveryEvent.source), col(DeliveryEvent.external_id)).where(
        col(DeliveryEvent.external_id).in_(sorted(ext))
    )
    return {(s, e) for s, e in session.execute(stmt).all()}


def _event_row(delivery: Delivery, obs: Observation) -> DeliveryEvent:
    return DeliveryEvent(
        tenant_id=delivery.tenant_id,
        delivery_id=delivery.id,
        status=obs.kind.value,
        detail=None if obs.detail is None else obs.detail[:2000],
        source=obs.source.value,
        url=None if obs.url is None else obs.url[:2048],
        occurred_at=obs.occurred_at,
        external_id=obs.external_id,
    )


def _mark_early(session: Session, delivery: Delivery) -> bool:
    """Flag the delivery for ``mark_sent``; True if the send was recorded meanwhile."""
    stmt = (
        update(Delivery)
        .where(col(Delivery.id) == delivery.id, col(Delivery.sent_at).is_(None))
        .values(early_events=True)
        .execution_options(synchronize_session=False)
    )
    if session.execute(stmt).rowcount:  # type: ignore[attr-defined]
        return False
    session.refresh(delivery)
    return True


def _stored_observations(session: Session, delivery_id: str) -> list[Observation]:
    stmt = sa_select(DeliveryEvent).where(
        col(DeliveryEvent.delivery_id) == delivery_id,
        col(DeliveryEvent.source) != "herald",
    )
    out = []
    for (e,) in session.execute(stmt).all():
        try:
            kind, source = Kind(e.status), Source(e.source)
        except ValueError:
            continue
        out.append(
            Observation(
                kind,
                source,
                delivery_id,
                occurred_at=e.occurred_at or e.created_at,
                url=e.url,
                detail=e.detail,
            )
        )
    return out


def _apply(
    delivery: Delivery, obs: Observation, incs: Increments, flow_key: str, category: str
) -> list[str]:
    """Move the in-memory row forward; count each stage the first time it is reached."""
    at = obs.occurred_at or utcnow()
    key = rollup_key(delivery, flow_key, category)
    stages = []
    for stage in REACHES.get(obs.kind, ()):
        column = f"{stage}_at"
        if getattr(delivery, column) is not None:
            continue
        setattr(delivery, column, at)
        stages.append(stage)
        if key is not None:
            incs.add(key, stage)
            if stage == "delivered":
                incs.latency(key, max(0.0, (at - delivery.created_at).total_seconds() * 1000))
    status = furthest(DeliveryStatus(delivery.status), obs.kind)
    if status != delivery.status:
        delivery.status = status.value
        if status in (DeliveryStatus.BOUNCED, DeliveryStatus.UNDELIVERED, DeliveryStatus.FAILED):
            delivery.reason = obs.detail or status.value
    delivery.updated_at = utcnow()
    return stages


def _side_effects(
    session: Session, delivery: Delivery, notification: Notification, obs: Observation
) -> None:
    """What an observation says about the subscriber, whether or not the send is recorded."""
    if obs.suppress and delivery.channel == Channel.EMAIL.value:
        _suppress(session, delivery, notification, obs)
    if obs.kind == Kind.UNSUBSCRIBED:
        opt_out_category(
            session, delivery.tenant_id, notification.subscriber_id, notification.category
        )


def _suppress(
    session: Session, delivery: Delivery, notification: Notification, obs: Observation
) -> None:
    subscriber = session.get(Subscriber, (delivery.tenant_id, notification.subscriber_id))
    if subscriber is None or not subscriber.email:
        return
    what = "spam report" if obs.kind == Kind.COMPLAINED else "hard bounce"
    reason = f"{what} from {obs.source.value} on delivery {delivery.id}"
    if obs.detail:
        reason += f": {obs.detail}"
    suppress(
        session, delivery.tenant_id, Channel.EMAIL.value, subscriber.email, reason, delivery.id
    )
