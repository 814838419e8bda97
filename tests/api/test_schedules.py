"""Schedules are real Temporal Schedules: checked through the Temporal client, not our API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import (
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleDescription,
    ScheduleOverlapPolicy,
    ScheduleRange,
)
from temporalio.service import RPCError, RPCStatusCode

from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.provider import FakeProvider
from workflows.broadcast import SA_BROADCAST
from workflows.notification import SA_TENANT

EMAIL = {"channel": "email", "subject": "Digest for {{ subscriber.name }}", "text": "{{ data.n }}"}
YEARLY = "0 9 1 1 *"  # far enough away that only a trigger runs it during a test


@pytest.fixture
async def cleanup(herald: Herald) -> AsyncIterator[list[str]]:
    """Schedule ids to delete afterwards, so the shared dev server does not keep firing."""
    ids: list[str] = []
    yield ids
    for sid in ids:
        try:
            await herald.client.get_schedule_handle(sid).delete()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise


async def _setup(herald: Herald, members: int = 3) -> list[dict[str, Any]]:
    """A flow and a topic ``news`` with ``members`` subscribers, all through the API."""
    await herald.put_flow("digest", event_type="digest.weekly", steps=[EMAIL])
    prefix = unique("s")
    rows = [
        {"id": f"{prefix}-{i}", "email": f"{prefix}-{i}@example.com", "name": f"N{i}"}
        for i in range(members)
    ]
    r = await herald.http.post("/v1/subscribers/bulk", json={"subscribers": rows})
    assert r.status_code == 200, r.text
    assert (await herald.http.put("/v1/topics/news", json={"name": "News"})).status_code == 200
    ids = [m["id"] for m in rows]
    r = await herald.http.post("/v1/topics/news/subscribers", json={"subscribers": ids})
    assert r.status_code in (200, 201), r.text
    return rows


def _body(**spec: Any) -> dict[str, Any]:
    broadcast = {"flow": "digest", "audience": {"topic": "news"}, "data": {"n": 42}}
    return {"broadcast": broadcast, **spec}


async def _put(herald: Herald, cleanup: list[str], key: str, body: dict[str, Any]) -> Any:
    r = await herald.http.put(f"/v1/schedules/{key}", json=body)
    assert r.status_code == 200, r.text
    cleanup.append(r.json()["id"])
    return r.json()


async def _describe(herald: Herald, key: str) -> ScheduleDescription:
    return await herald.client.get_schedule_handle(f"herald/{herald.tenant}/{key}").describe()


async def _listed(herald: Herald, sid: str, within: float = 15.0) -> None:
    """``temporal schedule list`` sees it (visibility is eventually consistent)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        ids = [s.id async for s in await herald.client.list_schedules()]
        if sid in ids:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{sid} not listed"
        await asyncio.sleep(0.2)


async def _run_started(herald: Herald, key: str, within: float = 20.0) -> str:
    """The workflow id of the schedule's first run, once the scheduler records it."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        info = (await _describe(herald, key)).info
        runs = [a.action for a in info.recent_actions] + list(info.running_actions)
        ids = [r.workflow_id for r in runs if isinstance(r, ScheduleActionExecutionStartWorkflow)]
        if ids:
            return ids[0]
        assert asyncio.get_running_loop().time() < deadline, "the triggered run never started"
        await asyncio.sleep(0.2)


def _recipients(provider: FakeProvider) -> list[str]:
    return [
        to["email"]
        for r in provider.requests("sendgrid")
        for p in r.json["personalizations"]
        for to in p["to"]
    ]


async def test_create_is_a_temporal_schedule_and_trigger_broadcasts(
    herald: Herald, fresh_provider: FakeProvider, cleanup: list[str]
) -> None:
    members = await _setup(herald)
    key = unique("weekly")
    created = await _put(herald, cleanup, key, _body(cron="0 9 * * MON", timezone="Europe/Berlin"))

    sid = f"herald/{herald.tenant}/{key}"
    assert (created["id"], created["key"], created["cron"]) == (sid, key, "0 9 * * MON")
    assert (created["timezone"], created["paused"], created["recent_runs"]) == (
        "Europe/Berlin",
        False,
        [],
    )
    assert created["broadcast"] == _body()["broadcast"]
    berlin = [
        datetime.fromisoformat(t).astimezone(ZoneInfo("Europe/Berlin"))
        for t in created["next_runs"]
    ]
    assert berlin and all((t.weekday(), t.hour, t.minute) == (0, 9, 0) for t in berlin)

    desc = await _describe(herald, key)
    action = desc.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.workflow == "BroadcastWorkflow"
    assert action.id == f"broadcast/{herald.tenant}/schedule/{key}"
    assert action.task_queue == herald.settings.workflow_task_queue
    assert action.typed_search_attributes.get(SA_TENANT) == herald.tenant
    assert desc.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    assert desc.schedule.spec.time_zone_name == "Europe/Berlin"
    assert desc.schedule.state.paused is False
    assert desc.typed_search_attributes.get(SA_TENANT) == herald.tenant
    await _listed(herald, sid)

    r = await herald.http.post(f"/v1/schedules/{key}/trigger")
    assert r.status_code == 200, r.text
    workflow_id = await _run_started(herald, key)
    assert workflow_id.startswith(f"broadcast/{herald.tenant}/schedule/{key}")
    handle = herald.client.get_workflow_handle(workflow_id)
    result = await asyncio.wait_for(handle.result(), 60)
    assert result["status"] == "completed", result

    # The run opened its own broadcast row, findable by the id it tagged itself with.
    broadcast_id = (await handle.describe()).typed_search_attributes.get(SA_BROADCAST)
    assert broadcast_id
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        body = (await herald.http.get(f"/v1/broadcasts/{broadcast_id}")).json()
        if body["counts"]["pending"] == 0:
            break
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.2)
    assert (body["workflow_id"], body["total"], body["counts"]["sent"]) == (workflow_id, 3, 3)
    assert sorted(_recipients(fresh_provider)) == sorted(m["email"] for m in members)
    assert fresh_provider.requests("sendgrid")[0].json["personalizations"][0]["to"]
    got = (await herald.http.get(f"/v1/schedules/{key}")).json()
    assert [run["workflow_id"] for run in got["recent_runs"]] == [workflow_id]


async def test_pause_update_in_place_and_delete(
    herald_factory: HeraldFactory, herald: Herald, cleanup: list[str]
) -> None:
    await _setup(herald, members=1)
    key = unique("daily")
    created = await _put(herald, cleanup, key, _body(interval="P1D"))
    assert created["interval"] == "P1D"
    assert (await _describe(herald, key)).schedule.spec.intervals[0].every == timedelta(days=1)

    r = await herald.http.post(f"/v1/schedules/{key}/pause", json={"note": "holiday freeze"})
    assert (r.status_code, r.json()["paused"], r.json()["note"]) == (200, True, "holiday freeze")
    state = (await _describe(herald, key)).schedule.state
    assert (state.paused, state.note) == (True, "holiday freeze")

    # An edit without `paused` keeps it paused, and changes the same schedule in place.
    edited = await _put(herald, cleanup, key, _body(cron="30 8 * * *", timezone="Asia/Tokyo"))
    assert (edited["id"], edited["cron"], edited["interval"]) == (created["id"], "30 8 * * *", None)
    desc = await _describe(herald, key)
    assert desc.schedule.state.paused is True
    assert desc.schedule.spec.time_zone_name == "Asia/Tokyo"
    assert not desc.schedule.spec.intervals
    (calendar,) = desc.schedule.spec.calendars  # the server compiles the cron into a calendar
    assert (calendar.hour, calendar.minute) == (
        (ScheduleRange(8, 8, 1),),
        (ScheduleRange(30, 30, 1),),
    )
    assert desc.info.last_updated_at is not None
    tokyo = [t.astimezone(ZoneInfo("Asia/Tokyo")) for t in desc.info.next_action_times]
    assert tokyo and all((t.hour, t.minute) == (8, 30) for t in tokyo)

    # The edit is refused whole when Temporal rejects the cron: the schedule is unchanged.
    r = await herald.http.put(f"/v1/schedules/{key}", json=_body(cron="0 25 * * *"))
    assert (r.status_code, r.json()["detail"][0]["loc"]) == (422, ["body", "cron"])
    assert (await _describe(herald, key)).schedule.spec.time_zone_name == "Asia/Tokyo"

    r = await herald.http.post(f"/v1/schedules/{key}/unpause")
    assert (r.status_code, r.json()["paused"]) == (200, False)
    assert (await _describe(herald, key)).schedule.state.paused is False
    await _put(herald, cleanup, key, _body(cron="30 8 * * *", paused=True))
    assert (await _describe(herald, key)).schedule.state.paused is True

    # Another tenant's key names another schedule: theirs is not ours to see.
    other = await herald_factory()
    assert (await other.http.get(f"/v1/schedules/{key}")).status_code == 404

    assert (await herald.http.delete(f"/v1/schedules/{key}")).status_code == 204
    assert (await herald.http.get(f"/v1/schedules/{key}")).status_code == 404
    assert (await herald.http.delete(f"/v1/schedules/{key}")).status_code == 404
    assert (await herald.http.post(f"/v1/schedules/{key}/trigger")).status_code == 404
    with pytest.raises(RPCError) as gone:
        await _describe(herald, key)
    assert gone.value.status == RPCStatusCode.NOT_FOUND


async def test_at_is_a_one_shot_schedule(herald: Herald, cleanup: list[str]) -> None:
    await _setup(herald, members=1)
    key = unique("launch")
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    created = await _put(herald, cleanup, key, _body(at=at.isoformat(), paused=True))
    assert datetime.fromisoformat(created["at"]) == at
    assert created["paused"] is True

    desc = await _describe(herald, key)
    assert (desc.schedule.state.limited_actions, desc.schedule.state.remaining_actions) == (True, 1)
    assert desc.schedule.state.paused is True
    assert desc.info.next_action_times[:1] == [at]


async def test_bad_bodies_name_the_field(herald: Herald) -> None:
    await _setup(herald, members=1)
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    broadcast = _body()["broadcast"]
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        (_body(cron=YEARLY, interval="P1D"), ["body", "interval"]),
        (_body(), ["body", "cron"]),
        (_body(at=past), ["body", "at"]),
        (_body(at="2031-01-01T09:00:00"), ["body", "at"]),
        (_body(interval="P1M"), ["body", "interval"]),
        (_body(interval="PT10S"), ["body", "interval"]),
        (_body(cron="every monday"), ["body", "cron"]),
        (_body(cron="61 * * * *"), ["body", "cron"]),  # refused by Temporal itself
        (_body(cron=YEARLY, timezone="Mars/Olympus"), ["body", "timezone"]),
        (
            {"cron": YEARLY, "broadcast": {**broadcast, "flow": "nope"}},
            ["body", "broadcast", "flow"],
        ),
        (
            {"cron": YEARLY, "broadcast": {**broadcast, "audience": {"topic": "missing"}}},
            ["body", "broadcast", "audience", "topic"],
        ),
        (
            {
                "cron": YEARLY,
                "broadcast": {**broadcast, "audience": {"topic": "news", "where": {"shoe": 1}}},
            },
            ["body", "broadcast", "audience", "where", "shoe"],
        ),
        (
            {"cron": YEARLY, "broadcast": {**broadcast, "event_type": "digest.weekly"}},
            ["body", "broadcast", "flow"],
        ),
        (
            {"cron": YEARLY, "broadcast": {**broadcast, "send_at": past}},
            ["body", "broadcast", "send_at"],
        ),
    ]
    key = unique("bad")
    for body, loc in cases:
        r = await herald.http.put(f"/v1/schedules/{key}", json=body)
        assert r.status_code == 422, (body, r.text)
        errors = r.json()["detail"]
        assert [e["loc"] for e in errors] == [loc], (body, errors)
    assert "months" in (await herald.http.put(f"/v1/schedules/{key}", json=cases[4][0])).text
    assert (
        await herald.http.put("/v1/schedules/-bad-key", json=_body(cron=YEARLY))
    ).status_code == 422
    assert (await herald.http.get(f"/v1/schedules/{key}")).status_code == 404


async def test_temporal_unreachable_is_503(herald_without_temporal: Herald) -> None:
    herald = herald_without_temporal
    await _setup(herald, members=1)
    key = unique("down")
    assert (
        await herald.http.put(f"/v1/schedules/{key}", json=_body(cron=YEARLY))
    ).status_code == 503
    assert (await herald.http.get(f"/v1/schedules/{key}")).status_code == 503
    assert (await herald.http.post(f"/v1/schedules/{key}/trigger")).status_code == 503
