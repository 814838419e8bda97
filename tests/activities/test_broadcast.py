"""The broadcast activities on their own: the local-time plan and per-timezone enrollment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine
from temporalio.testing import ActivityEnvironment

from activities.broadcast import BroadcastActivities, EnrollInput, ZonesInput
from core.audience import Audience
from store.broadcasts import BroadcastCreate, open_broadcast
from store.db import session_scope
from store.flows import put_flow
from store.subscribers import upsert_subscriber
from store.topics import add_members, put_topic
from tests.conftest import unique

ZONES = ("Asia/Tokyo", "Europe/Berlin", "America/New_York")
BASE = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)


def _broadcast(engine: Engine) -> tuple[str, dict[str, str]]:
    """A local-time broadcast to two members in each of three timezones."""
    tenant = unique("t")
    zone_of = {f"m-{z}-{i}": tz for z, tz in enumerate(ZONES) for i in range(2)}
    with session_scope(engine) as s:
        for sid, tz in zone_of.items():
            upsert_subscriber(s, tenant, sid, {"email": f"{sid}@example.com", "timezone": tz})
        step = {"channel": "email", "subject": "Hi", "text": "x"}
        put_flow(s, tenant, "news", {"event_type": "news.sent", "steps": [step]})
        put_topic(s, tenant, "world", "World")
        add_members(s, tenant, "world", list(zone_of))
        body = BroadcastCreate(flow="news", audience={"topic": "world"}, local_time="09:00")
        row, _ = open_broadcast(
            s,
            tenant,
            body,
            Audience(topic="world"),
            idempotency_key=None,
            workflow_id_for=lambda bid: f"broadcast/{tenant}/{bid}",
        )
        return row.id, zone_of


def test_the_plan_has_one_timer_per_timezone_at_nine_local(engine: Engine) -> None:
    broadcast_id, _ = _broadcast(engine)
    acts = BroadcastActivities(engine)
    plan = ActivityEnvironment().run(
        acts.broadcast_timezones,
        ZonesInput(broadcast_id=broadcast_id, local_time="09:00", base=BASE),
    )
    # 06:00 UTC: Berlin's 09:00 comes first (08:00 UTC), then New York's, then Tokyo's.
    assert [p.timezone for p in plan] == ["Europe/Berlin", "America/New_York", "Asia/Tokyo"]
    for p in plan:
        local = p.at.astimezone(ZoneInfo(p.timezone))
        assert (local.hour, local.minute) == (9, 0)
        assert BASE < p.at <= BASE + timedelta(days=1)


def test_a_timezone_pass_enrolls_only_that_timezone(engine: Engine) -> None:
    broadcast_id, zone_of = _broadcast(engine)
    acts = BroadcastActivities(engine)
    env = ActivityEnvironment()
    seen: dict[str, list[str]] = {}
    for tz in ZONES:
        result = env.run(
            acts.enroll_batch, EnrollInput(broadcast_id=broadcast_id, limit=100, timezone=tz)
        )
        assert result.next_after is None
        seen[tz] = sorted(i.subscriber_id for i in result.items)
    assert seen == {tz: sorted(s for s, z in zone_of.items() if z == tz) for tz in ZONES}
    # A repeated pass (a retry after a crash) starts the same notifications again, no new ones.
    again = env.run(
        acts.enroll_batch, EnrollInput(broadcast_id=broadcast_id, limit=100, timezone=ZONES[0])
    )
    assert sorted(i.subscriber_id for i in again.items) == seen[ZONES[0]]
