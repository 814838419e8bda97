"""What retention deletes and keeps, against the real database (SQLite or PostgreSQL).

Rows are dated in 2001, long before anything else in the test database, and each test
first drains that era, so counts are exact; the foreign keys are enforced on both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from core.types import new_id
from store.broadcasts import Broadcast, BroadcastStatus
from store.db import read_scope, session_scope
from store.engagement import Suppression, TrackedLink
from store.models import (
    Delivery,
    DeliveryEvent,
    DigestClaim,
    Event,
    Notification,
    SandboxMessage,
)
from store.retention import PHASES, Cutoff, Phase, purge
from store.rollups import Increments, RollupKey, delivery_rollups
from tests.conftest import unique

OLD = datetime(2001, 1, 1, 12, tzinfo=UTC)
BEFORE = datetime(2001, 2, 1, tzinfo=UTC)
YOUNG = datetime(2001, 3, 1, 12, tzinfo=UTC)
CUTOFF = Cutoff(before=BEFORE, failed_before=BEFORE)


@dataclass
class Seeded:
    """One notification's rows, by table."""

    tenant: str
    event_id: str
    notification_id: str
    rows: dict[type[Any], list[Any]] = field(default_factory=dict)


def seed(
    engine: Engine,
    tenant: str,
    *,
    at: datetime,
    statuses: tuple[str, ...] = ("sent",),
    event_id: str | None = None,
    updated_at: datetime | None = None,
    broadcast_id: str | None = None,
    claimed: bool = False,
) -> Seeded:
    """An event (unless given) with one notification, a delivery per status, and under each
    delivery a history row, a tracked link and a sandbox message; all dated ``at``."""
    with session_scope(engine) as s:
        if event_id is None:
            event_id = new_id("evt")
            # Dispatched: an outbox sweep in a later test must not try to start these.
            s.add(
                Event(
                    id=event_id,
                    tenant_id=tenant,
                    type="t",
                    fingerprint="x",
                    received_at=at,
                    dispatched_at=at,
                )
            )
            s.flush()
        nid = new_id("ntf")
        s.add(
            Notification(
                id=nid,
                tenant_id=tenant,
                event_id=event_id,
                flow_key="f",
                subscriber_id="ada",
                workflow_id=unique("wf"),
                broadcast_id=broadcast_id,
                created_at=at,
            )
        )
        s.flush()
        seeded = Seeded(tenant, event_id, nid)
        for i, status in enumerate(statuses):
            did = new_id("dlv")
            s.add(
                Delivery(
                    id=did,
                    tenant_id=tenant,
                    notification_id=nid,
                    step_index=i,
                    channel="email",
                    status=status,
                    created_at=at,
                    updated_at=updated_at or at,
                )
            )
            s.flush()
            s.add(DeliveryEvent(tenant_id=tenant, delivery_id=did, status=status, created_at=at))
            link = TrackedLink(
                id=new_id("l")[:32], tenant_id=tenant, delivery_id=did, url="https://x.test"
            )
            link.created_at = at
            message = SandboxMessage(
                id=new_id("sbx"), tenant_id=tenant, delivery_id=did, channel="email", created_at=at
            )
            s.add_all([link, message])
            seeded.rows.setdefault(Delivery, []).append(did)
            seeded.rows.setdefault(TrackedLink, []).append(link.id)
            seeded.rows.setdefault(SandboxMessage, []).append(message.id)
        if claimed:
            s.add(DigestClaim(notification_id=nid, claim_id=unique("claim")))
    return seeded


def drain(engine: Engine, cutoff: Cutoff = CUTOFF, limit: int = 1000) -> dict[str, int]:
    """Every phase until it runs dry, as the workflow does; rows deleted per table."""
    totals: dict[str, int] = {}
    for phase in PHASES:
        while True:
            with session_scope(engine) as s:
                done = purge(s, phase, cutoff, limit)
            for name, n in done.deleted.items():
                totals[name] = totals.get(name, 0) + n
            if done.selected < limit:
                break
    return totals


def present(engine: Engine, seeded: Seeded) -> dict[str, int]:
    """How many of the seeded rows each table still holds."""
    dids = seeded.rows.get(Delivery, [])
    with read_scope(engine) as s:

        def n(model: Any, column: Any, ids: list[str]) -> int:
            stmt = select(func.count()).select_from(model).where(col(column).in_(ids))
            return int(s.execute(stmt).scalar_one())

        return {
            "events": n(Event, Event.id, [seeded.event_id]),
            "notifications": n(Notification, Notification.id, [seeded.notification_id]),
            "deliveries": n(Delivery, Delivery.id, dids),
            "delivery_events": n(DeliveryEvent, DeliveryEvent.delivery_id, dids),
            "tracked_links": n(TrackedLink, TrackedLink.delivery_id, dids),
            "sandbox_messages": n(SandboxMessage, SandboxMessage.delivery_id, dids),
            "digest_claims": n(DigestClaim, DigestClaim.notification_id, [seeded.notification_id]),
        }


GONE = dict.fromkeys(
    (
        "events",
        "notifications",
        "deliveries",
        "delivery_events",
        "tracked_links",
        "sandbox_messages",
        "digest_claims",
    ),
    0,
)


def rollups(engine: Engine, tenant: str) -> list[Any]:
    with read_scope(engine) as s:
        rows = s.execute(select(delivery_rollups).where(delivery_rollups.c.tenant_id == tenant))
        return [tuple(r) for r in rows]


def test_old_rows_of_finished_notifications_go_open_and_young_ones_stay(engine: Engine) -> None:
    drain(engine)
    tenant = unique("tenant")
    done = seed(engine, tenant, at=OLD, statuses=("sent", "skipped"), claimed=True)
    running = seed(engine, tenant, at=OLD, statuses=("sent", "pending"))
    waiting = seed(engine, tenant, at=OLD, statuses=("scheduled",))
    young = seed(engine, tenant, at=YOUNG, statuses=("sent",))
    with session_scope(engine) as s:
        sent = done.rows[Delivery][0]
        s.add(
            Suppression(
                tenant_id=tenant, channel="email", address="a@x.test", reason="b", delivery_id=sent
            )
        )
        incs = Increments()
        incs.add(RollupKey(tenant, OLD.replace(minute=0), "f", "email", "sandbox", "t"), "sent", 3)
        incs.flush(s)
    rollups_before = rollups(engine, tenant)
    kept = {o.notification_id: present(engine, o) for o in (running, waiting, young)}

    totals = drain(engine)

    assert present(engine, done) == GONE
    assert totals == {
        "notifications": 1,
        "deliveries": 2,
        "delivery_events": 2,
        "tracked_links": 2,
        "sandbox_messages": 2,
        "digest_claims": 1,
        "events": 1,
    }
    for other in (running, waiting, young):
        assert present(engine, other) == kept[other.notification_id]
        assert present(engine, other)["events"] == 1
    assert rollups(engine, tenant) == rollups_before != []
    with read_scope(engine) as s:
        assert s.get(Suppression, (tenant, "email", "a@x.test")) is not None


def test_a_dead_letter_that_may_still_wait_for_a_retry_is_kept(engine: Engine) -> None:
    cutoff = Cutoff(before=BEFORE, failed_before=datetime(2001, 1, 15, tzinfo=UTC))
    drain(engine, cutoff)
    tenant = unique("tenant")
    closed = seed(
        engine, tenant, at=OLD, statuses=("failed",), updated_at=datetime(2001, 1, 10, tzinfo=UTC)
    )
    waiting = seed(
        engine, tenant, at=OLD, statuses=("failed",), updated_at=datetime(2001, 1, 20, tzinfo=UTC)
    )
    before = present(engine, waiting)

    drain(engine, cutoff)

    assert present(engine, closed) == GONE
    assert present(engine, waiting) == before
    assert before["notifications"] == 1


def test_an_event_stays_while_any_of_its_notifications_does(engine: Engine) -> None:
    drain(engine)
    tenant = unique("tenant")
    old = seed(engine, tenant, at=OLD)
    # A replay of the old event last month: the event is kept for it.
    replayed = seed(engine, tenant, at=YOUNG, event_id=old.event_id)

    totals = drain(engine)

    assert present(engine, old)["notifications"] == 0
    assert present(engine, replayed)["notifications"] == 1
    assert present(engine, old)["events"] == 1
    assert "events" not in totals


def test_an_unfinished_broadcast_keeps_its_event_and_notifications(engine: Engine) -> None:
    drain(engine)
    tenant = unique("tenant")

    def broadcast(status: str) -> Seeded:
        bid = new_id("bc")
        first = seed(engine, tenant, at=OLD, broadcast_id=bid)
        with session_scope(engine) as s:
            s.add(
                Broadcast(
                    id=bid,
                    tenant_id=tenant,
                    event_id=first.event_id,
                    event_type="t",
                    workflow_id=unique("wf"),
                    status=status,
                    created_at=OLD,
                )
            )
        return first

    running = broadcast(BroadcastStatus.PAUSED)
    finished = broadcast(BroadcastStatus.COMPLETED)
    with session_scope(engine) as s:
        eid = new_id("evt")
        s.add(
            Event(
                id=eid,
                tenant_id=tenant,
                type="t",
                fingerprint="x",
                received_at=OLD,
                dispatched_at=OLD,
            )
        )
        s.add(
            Broadcast(
                id=new_id("bc"),
                tenant_id=tenant,
                event_id=eid,
                event_type="t",
                workflow_id=unique("wf"),
                status=BroadcastStatus.SCHEDULED,
            )
        )

    drain(engine)

    assert present(engine, running)["notifications"] == 1
    assert present(engine, running)["events"] == 1
    assert present(engine, finished) == GONE
    with read_scope(engine) as s:
        assert s.get(Event, eid) is not None  # a scheduled broadcast enrolls from it later
        assert (
            s.execute(select(func.count()).where(col(Broadcast.tenant_id) == tenant)).scalar_one()
            == 3
        )


def test_each_batch_is_bounded_and_children_go_first(engine: Engine) -> None:
    drain(engine)
    tenant = unique("tenant")
    seeded = [seed(engine, tenant, at=OLD) for _ in range(5)]

    picked: dict[Phase, list[int]] = {}
    for phase in PHASES:
        while True:
            with session_scope(engine) as s:
                done = purge(s, phase, CUTOFF, 2)
            picked.setdefault(phase, []).append(done.selected)
            if done.selected < 2:
                break

    assert picked == {
        Phase.NOTIFICATIONS: [2, 2, 1],
        Phase.EVENTS: [2, 2, 1],
        # Left by the deleted deliveries (its delivery_id has no index to delete by).
        Phase.SANDBOX_MESSAGES: [2, 2, 1],
        Phase.TRACKED_LINKS: [0],
    }
    assert all(present(engine, s) == GONE for s in seeded)


def test_sandbox_messages_and_links_of_a_vanished_delivery_go_when_old(engine: Engine) -> None:
    drain(engine)
    tenant = unique("tenant")
    with session_scope(engine) as s:
        ids = {}
        for name, at in (("old", OLD), ("young", YOUNG)):
            dlv = new_id("dlv")  # no such delivery (it was deleted, or never stored)
            message = SandboxMessage(
                id=new_id("sbx"), tenant_id=tenant, delivery_id=dlv, channel="sms", created_at=at
            )
            link = TrackedLink(id=new_id("l")[:32], tenant_id=tenant, delivery_id=dlv, url="u")
            link.created_at = at
            s.add_all([message, link])
            ids[name] = (message.id, link.id)

    totals = drain(engine)

    assert totals == {"sandbox_messages": 1, "tracked_links": 1}
    with read_scope(engine) as s:
        assert s.get(SandboxMessage, ids["old"][0]) is None
        assert s.get(TrackedLink, ids["old"][1]) is None
        assert s.get(SandboxMessage, ids["young"][0]) is not None
        assert s.get(TrackedLink, ids["young"][1]) is not None


def test_a_second_run_finds_nothing(engine: Engine) -> None:
    drain(engine)
    tenant = unique("tenant")
    seed(engine, tenant, at=OLD - timedelta(days=30))
    assert drain(engine)["notifications"] == 1
    assert drain(engine) == {}
