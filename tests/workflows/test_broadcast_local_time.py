"""A broadcast at 09:00 in each recipient's own timezone, on the time-skipping server.

One durable timer per timezone (not per person) is asserted from the broadcast's history,
and each zone's batch is enrolled at that zone's 09:00 by the server's (skipped) clock.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from tests.api.test_broadcasts import EMAIL, _broadcast, _emailed, _members, _topic
from tests.conftest import Herald
from tests.fakes.provider import FakeProvider

ZONES = ("America/New_York", "Asia/Tokyo", "Europe/Berlin")


@pytest.fixture
def herald(skipping_herald: Herald) -> Herald:
    return skipping_herald


def _next_nine(now: datetime, zone: str) -> datetime:
    local = now.astimezone(ZoneInfo(zone))
    at = local.replace(hour=9, minute=0, second=0, microsecond=0)
    if at <= local:
        at = (local + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    return at.astimezone(UTC)


async def test_local_time_sends_each_zone_at_its_own_nine_with_one_timer_per_zone(
    herald: Herald, skipping_env: WorkflowEnvironment, fresh_provider: FakeProvider
) -> None:
    await herald.put_flow("morning", event_type="news.morning", steps=[EMAIL])
    members = [m for zone in ZONES for m in _members(3, timezone=zone)]
    await _topic(herald, members)
    by_zone = {zone: {m["email"] for m in members if m["timezone"] == zone} for zone in ZONES}

    now = await skipping_env.get_current_time()
    created = await _broadcast(
        herald, flow="morning", audience={"topic": "beta"}, data={"n": 1}, local_time="09:00"
    )
    assert created["status"] == "scheduled"
    handle = herald.client.get_workflow_handle(created["workflow_id"])
    # Past the last zone's 09:00 on the server's clock, timer by timer, work in between.
    await skipping_env.sleep(max(_next_nine(now, z) for z in ZONES) - now + timedelta(minutes=1))
    await asyncio.wait_for(handle.result(), 30)

    history = [e async for e in handle.fetch_history_events()]
    timers = [e for e in history if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
    assert len(timers) == len(ZONES)  # one per timezone, not one per recipient
    enrolls: dict[str, datetime] = {}
    for e in history:
        if e.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        attrs = e.activity_task_scheduled_event_attributes
        summary = e.user_metadata.summary.data.decode() if e.HasField("user_metadata") else ""
        zone = next((z for z in ZONES if f"({z})" in summary), None)
        if attrs.activity_type.name == "enroll_batch" and zone is not None:
            enrolls.setdefault(zone, e.event_time.ToDatetime(tzinfo=UTC))
    # Each zone is enrolled at its own 09:00 (server time), soonest first.
    for zone in ZONES:
        assert abs(enrolls[zone] - _next_nine(now, zone)) < timedelta(seconds=5), (zone, enrolls)
    order = sorted(ZONES, key=lambda z: enrolls[z])
    assert order == sorted(ZONES, key=lambda z: _next_nine(now, z))

    # The mail went out zone by zone, in that order, to exactly the members of each.
    deadline = asyncio.get_running_loop().time() + 30
    while len(_emailed(fresh_provider)) < len(members):
        assert asyncio.get_running_loop().time() < deadline, _emailed(fresh_provider)
        await asyncio.sleep(0.1)
    sent = _emailed(fresh_provider)
    assert sorted(sent) == sorted(m["email"] for m in members)
    assert [set(sent[i : i + 3]) for i in range(0, len(sent), 3)] == [by_zone[z] for z in order]
    body: dict[str, Any] = (await herald.http.get(f"/v1/broadcasts/{created['id']}")).json()
    assert body["status"] == "completed"
