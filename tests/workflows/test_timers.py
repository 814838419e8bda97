"""Long durable timers on the time-skipping test server: days and weeks pass in a blink.

The whole stack runs as usual (API, dispatcher, workers, fake providers); only the
Temporal server is the time-skipping one, which jumps ahead whenever every workflow
is idle and a test awaits a workflow result.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Herald, unique
from tests.fakes.provider import FakeProvider
from tests.histories import keep_history


@pytest.fixture
def herald(skipping_herald: Herald) -> Herald:
    return skipping_herald


async def _until(herald: Herald, event_id: str, check: Any, within: float = 20.0) -> dict[str, Any]:
    """Poll the event (in real time, with the server's clock held) until ``check`` holds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        event = (await herald.http.get(f"/v1/events/{event_id}")).json()
        if event.get("notifications") and check(event["notifications"][0]):
            return event
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached: {event}")
        await asyncio.sleep(0.1)


def _statuses(notification: dict[str, Any]) -> list[str]:
    return [d["status"] for d in notification["deliveries"]]


async def _finish(
    herald: Herald, env: WorkflowEnvironment, event_id: str, skip: timedelta
) -> dict[str, Any]:
    """Let ``skip`` of server time pass (timer by timer, work in between), then await."""
    event = await _until(herald, event_id, lambda n: True)
    workflow_id = event["notifications"][0]["workflow_id"]
    before = await env.get_current_time()
    await env.sleep(skip)
    assert await env.get_current_time() - before >= skip
    await herald.client.get_workflow_handle(workflow_id).result()
    return (await herald.http.get(f"/v1/events/{event_id}")).json()


async def _history(herald: Herald, workflow_id: str, kind: EventType.ValueType) -> list[Any]:
    handle = herald.client.get_workflow_handle(workflow_id)
    return [e async for e in handle.fetch_history_events() if e.event_type == kind]


async def _timers(herald: Herald, workflow_id: str) -> list[timedelta]:
    started = await _history(herald, workflow_id, EventType.EVENT_TYPE_TIMER_STARTED)
    return [e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta() for e in started]


async def _fired(herald: Herald, workflow_id: str) -> list[datetime]:
    fired = await _history(herald, workflow_id, EventType.EVENT_TYPE_TIMER_FIRED)
    return [e.event_time.ToDatetime(tzinfo=UTC) for e in fired]


def _email(text: str) -> dict[str, str]:
    return {"channel": "email", "subject": text, "text": text}


async def _emailed(herald: Herald, flow: str, event_type: str, **body: Any) -> str:
    """A new subscriber with an email address, and the flow ``flow`` for ``event_type``."""
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    await herald.put_flow(flow, event_type=event_type, **body)
    return sub


async def test_day_and_week_long_delays_run_in_order(
    herald: Herald, fresh_provider: FakeProvider, skipping_env: WorkflowEnvironment
) -> None:
    sub = await _emailed(
        herald,
        "onboarding",
        "user.signup",
        steps=[
            _email("day 0"),
            {"type": "delay", "duration": "P1D"},
            _email("day 1"),
            {"type": "delay", "duration": "P1W"},
            _email("day 8"),
        ],
    )
    published = await herald.publish(type="user.signup", to=[sub])
    first = await _until(herald, published["id"], lambda n: _statuses(n)[0] == "sent")
    handle = herald.client.get_workflow_handle(first["notifications"][0]["workflow_id"])
    # What support staff see in the UI while the notification sleeps: the step it is on,
    # and each step's state from the `status` query.
    deadline = asyncio.get_running_loop().time() + 10
    metadata = "__temporal_workflow_metadata"
    while not (details := (await handle.query(metadata)).current_details).startswith("step 2/"):
        assert asyncio.get_running_loop().time() < deadline, details
        await asyncio.sleep(0.05)
    assert details.startswith("step 2/5: delay 1d until ")
    view = await handle.query("status")
    assert [s["state"] for s in view["steps"]] == [
        "sent",
        "waiting",
        "pending",
        "pending",
        "pending",
    ]
    assert view["current_step"] == 1

    event = await _finish(herald, skipping_env, published["id"], timedelta(days=9))

    (n,) = event["notifications"]
    assert _statuses(n) == ["sent", "sent", "sent"]
    subjects = [r.json["subject"] for r in fresh_provider.requests("sendgrid")]
    assert subjects == ["day 0", "day 1", "day 8"]
    assert await _timers(herald, n["workflow_id"]) == [timedelta(days=1), timedelta(weeks=1)]


async def test_drip_stops_when_the_exit_event_arrives(
    herald: Herald, fresh_provider: FakeProvider, skipping_env: WorkflowEnvironment
) -> None:
    sub = await _emailed(
        herald,
        "drip",
        "user.signup",
        exit_on=["order.placed"],
        steps=[
            _email("welcome"),
            {"type": "delay", "duration": "P2D"},
            _email("tips"),
            {"type": "delay", "duration": "P5D"},
            _email("offer"),
        ],
    )
    signup = await herald.publish(type="user.signup", to=[sub])
    await _until(herald, signup["id"], lambda n: _statuses(n)[0] == "sent")

    await herald.publish(type="order.placed", to=[sub])
    # No server time passes: the exit wakes the 2-day timer, and the drip ends at once.
    handle = herald.client.get_workflow_handle(signup["notifications"][0]["workflow_id"])
    await asyncio.wait_for(handle.result(), 10)
    event = (await herald.http.get(f"/v1/events/{signup['id']}")).json()

    (n,) = event["notifications"]
    assert _statuses(n) == ["sent", "skipped", "skipped"]
    assert n["stop_reason"].startswith("exited: order.placed")
    assert "exited: order.placed" in n["deliveries"][1]["reason"]
    assert [r.json["subject"] for r in fresh_provider.requests("sendgrid")] == ["welcome"]


async def _escalation(herald: Herald) -> str:
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100", push_tokens=["tok-1"])
    await herald.put_flow(
        "escalate",
        event_type="incident.opened",
        steps=[
            {"channel": "push", "title": "Incident", "body": "please look"},
            {"type": "wait", "duration": "PT15M", "until": "acknowledged"},
            {"channel": "sms", "text": "Incident still open", "unless": "acknowledged"},
        ],
    )
    return sub


async def test_escalation_sends_sms_when_nobody_acknowledges(
    herald: Herald, fresh_provider: FakeProvider, skipping_env: WorkflowEnvironment
) -> None:
    sub = await _escalation(herald)
    published = await herald.publish(type="incident.opened", to=[sub])

    event = await _finish(herald, skipping_env, published["id"], timedelta(minutes=16))

    (n,) = event["notifications"]
    assert _statuses(n) == ["sent", "sent"]
    assert len(fresh_provider.requests("fcm")) == 1
    assert len(fresh_provider.requests("twilio")) == 1
    assert await _timers(herald, n["workflow_id"]) == [timedelta(minutes=15)]
    await keep_history(herald.client, n["workflow_id"], "notification-escalation")


async def test_acknowledgement_ends_the_wait_and_skips_the_sms(
    herald: Herald, fresh_provider: FakeProvider, skipping_env: WorkflowEnvironment
) -> None:
    sub = await _escalation(herald)
    published = await herald.publish(type="incident.opened", to=[sub])
    event = await _until(herald, published["id"], lambda n: _statuses(n)[0] == "sent")
    notification_id = event["notifications"][0]["id"]

    ack = await herald.http.post(f"/v1/notifications/{notification_id}/ack")
    assert ack.status_code == 202, ack.text
    # No time needs to pass: the acknowledgement ends the 15-minute wait at once.
    handle = herald.client.get_workflow_handle(event["notifications"][0]["workflow_id"])
    await asyncio.wait_for(handle.result(), 10)
    event = (await herald.http.get(f"/v1/events/{published['id']}")).json()

    (n,) = event["notifications"]
    assert _statuses(n) == ["sent", "skipped"]
    assert n["deliveries"][1]["reason"] == "acknowledged"
    assert n["acknowledged_at"] is not None
    assert fresh_provider.requests("twilio") == []
    view = await herald.client.get_workflow_handle(n["workflow_id"]).query("status")
    assert view["acknowledged"] is True
    assert [s["state"] for s in view["steps"]] == ["sent", "done", "skipped"]


async def test_an_opt_out_made_during_a_delay_is_honoured(
    herald: Herald, fresh_provider: FakeProvider, skipping_env: WorkflowEnvironment
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100")
    await herald.put_flow(
        "reminder",
        event_type="cart.abandoned",
        steps=[{"type": "delay", "duration": "P1D"}, {"channel": "sms", "text": "Still there?"}],
    )
    published = await herald.publish(type="cart.abandoned", to=[sub])
    await _until(herald, published["id"], lambda n: n["status"] == "running")

    r = await herald.http.put(
        f"/v1/subscribers/{sub}/preferences", json={"channels": {"sms": False}}
    )
    assert r.status_code == 200, r.text
    event = await _finish(herald, skipping_env, published["id"], timedelta(days=2))

    (d,) = event["notifications"][0]["deliveries"]
    assert d["status"] == "skipped"
    assert "opted out of sms" in d["reason"]
    assert fresh_provider.requests("twilio") == []


async def test_send_window_waits_for_the_next_local_morning(
    herald: Herald, fresh_provider: FakeProvider, skipping_env: WorkflowEnvironment
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com", timezone="Asia/Tokyo")
    await herald.put_flow(
        "summary",
        event_type="report.ready",
        steps=[{"type": "delay", "until_local": "09:00"}, _email("Your morning summary")],
    )
    published = await herald.publish(type="report.ready", to=[sub])
    event = await _finish(herald, skipping_env, published["id"], timedelta(days=1, minutes=1))

    (n,) = event["notifications"]
    assert _statuses(n) == ["sent"]
    (mail,) = fresh_provider.requests("sendgrid")
    (at,) = await _fired(herald, n["workflow_id"])
    local = at.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (9, 0)
    summaries = [
        e.user_metadata.summary.data.decode()
        for e in await _history(herald, n["workflow_id"], EventType.EVENT_TYPE_TIMER_STARTED)
    ]
    assert summaries == ['"send window: until 09:00 Asia/Tokyo"']


async def test_delay_until_a_timestamp_from_the_event(
    herald: Herald, fresh_provider: FakeProvider, skipping_env: WorkflowEnvironment
) -> None:
    sub = await _emailed(
        herald,
        "appointment",
        "appointment.booked",
        steps=[{"type": "delay", "until": "{{ data.remind_at }}"}, _email("Reminder")],
    )
    now = await skipping_env.get_current_time()
    remind_at = (now + timedelta(days=3)).replace(microsecond=0)
    published = await herald.publish(
        type="appointment.booked", to=[sub], data={"remind_at": remind_at.isoformat()}
    )
    event = await _finish(herald, skipping_env, published["id"], timedelta(days=4))

    (n,) = event["notifications"]
    assert _statuses(n) == ["sent"]
    (fired,) = await _fired(herald, n["workflow_id"])
    assert abs((fired - remind_at).total_seconds()) < 1


async def test_quiet_hours_hold_an_sms_until_they_end_then_send_it(
    herald: Herald, fresh_provider: FakeProvider, skipping_env: WorkflowEnvironment
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100", timezone="Europe/Berlin")
    local = (await skipping_env.get_current_time()).astimezone(ZoneInfo("Europe/Berlin"))
    start, end = local - timedelta(hours=1), local + timedelta(hours=3)
    quiet = {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"}
    r = await herald.http.put(f"/v1/subscribers/{sub}/preferences", json={"quiet_hours": quiet})
    assert r.status_code == 200, r.text
    await herald.put_flow(
        "nudge", event_type="cart.abandoned", steps=[{"channel": "sms", "text": "x"}]
    )
    published = await herald.publish(type="cart.abandoned", to=[sub])
    scheduled = await _until(
        herald, published["id"], lambda n: n["deliveries"][0]["status"] == "scheduled"
    )
    assert fresh_provider.requests("twilio") == []
    assert scheduled["notifications"][0]["deliveries"][0]["reason"] == (
        f"quiet hours until {end:%H:%M} Europe/Berlin"
    )

    event = await _finish(herald, skipping_env, published["id"], timedelta(hours=4))

    (n,) = event["notifications"]
    assert _statuses(n) == ["sent"]
    (fired,) = await _fired(herald, n["workflow_id"])
    assert abs(fired - end.replace(second=0, microsecond=0)) < timedelta(seconds=1)
    assert len(fresh_provider.requests("twilio")) == 1
    await keep_history(herald.client, n["workflow_id"], "notification-quiet-hours")


async def test_a_delay_timestamp_the_event_lacks_stops_the_notification_saying_why(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = await _emailed(
        herald,
        "appointment",
        "appointment.booked",
        steps=[
            _email("Booked"),
            {"type": "delay", "until": "{{ data.remind_at }}"},
            _email("Soon"),
        ],
    )
    published = await herald.publish(type="appointment.booked", to=[sub], data={})
    await herald.wait_dispatched(published["id"])
    handle = herald.client.get_workflow_handle(published["notifications"][0]["workflow_id"])
    await asyncio.wait_for(handle.result(), 10)

    (n,) = (await herald.http.get(f"/v1/events/{published['id']}")).json()["notifications"]
    assert _statuses(n) == ["sent", "skipped"]
    reason = n["deliveries"][1]["reason"]
    assert reason.startswith("step 2: delay until {{ data.remind_at }} gave '', not an ISO 8601")
    assert [r.json["subject"] for r in fresh_provider.requests("sendgrid")] == ["Booked"]
