"""Throttle, cancellation and quiet hours on the real dev server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.service import RPCError, RPCStatusCode

from tests.conftest import Herald, unique
from tests.fakes.provider import FakeProvider
from workflows.notification import NotificationWorkflow

SMS = {"channel": "sms", "text": "Hi {{ data.n }}"}
EMAIL = {"channel": "email", "subject": "Order", "text": "Your order {{ data.order }}"}


async def poll_event(
    herald: Herald,
    event_id: str,
    until: Callable[[dict[str, Any]], bool],
    within: float = 20.0,
) -> dict[str, Any]:
    """Read the event back until ``until(event)`` holds (for states short of finished)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        r = await herald.http.get(f"/v1/events/{event_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if until(body):
            return body
        assert loop.time() < deadline, f"{event_id} never reached the state: {body}"
        await asyncio.sleep(0.1)


def deliveries(event: dict[str, Any]) -> list[dict[str, Any]]:
    (n,) = event["notifications"]
    result: list[dict[str, Any]] = n["deliveries"]
    return result


async def finish(herald: Herald, event_id: str) -> dict[str, Any]:
    """Wait for the notifications that run; throttled ones never start a workflow."""
    body = await herald.wait_dispatched(event_id)
    for n in body["notifications"]:
        if n["stop_reason"] != "throttled":
            await asyncio.wait_for(herald.client.get_workflow_handle(n["workflow_id"]).result(), 20)
    r = await herald.http.get(f"/v1/events/{event_id}")
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def assert_no_workflow(herald: Herald, workflow_id: str) -> None:
    with pytest.raises(RPCError) as info:
        await herald.client.get_workflow_handle(workflow_id).describe()
    assert info.value.status == RPCStatusCode.NOT_FOUND


# --- throttle ----------------------------------------------------------------------------


async def test_throttle_stops_notifications_over_the_limit(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100")
    await herald.put_flow(
        "alerts",
        event_type="alert.raised",
        steps=[SMS],
        throttle={"limit": 2, "period": "PT1H"},
    )
    events = [
        await finish(
            herald, (await herald.publish(type="alert.raised", to=[sub], data={"n": i}))["id"]
        )
        for i in range(4)
    ]
    notifications = [e["notifications"][0] for e in events]
    assert [n["stop_reason"] for n in notifications] == [None, None, "throttled", "throttled"]
    assert [n["status"] for n in notifications] == ["sent", "sent", "skipped", "skipped"]
    for n in notifications[2:]:
        (d,) = n["deliveries"]
        assert (d["status"], d["reason"], d["attempts"]) == ("skipped", "throttled", 0)
        await assert_no_workflow(herald, n["workflow_id"])
    sent = fresh_provider.requests("twilio")
    assert len(sent) == 2
    assert sorted(r.form["Body"] for r in sent) == ["Hi 0", "Hi 1"]


async def test_throttle_key_counts_each_key_separately(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub, other = unique("u"), unique("u")
    await herald.put_subscriber(sub, phone="+14155550100")
    await herald.put_subscriber(other, phone="+14155550101")
    await herald.put_flow(
        "builds",
        event_type="build.failed",
        steps=[SMS],
        throttle={"limit": 1, "period": "PT1H", "key": "{{ data.project }}"},
    )

    async def send(project: str, to: str = sub) -> str | None:
        accepted = await herald.publish(
            type="build.failed", to=[to], data={"n": project, "project": project}
        )
        event = await finish(herald, accepted["id"])
        reason: str | None = event["notifications"][0]["stop_reason"]
        return reason

    assert await send("api") is None
    assert await send("api") == "throttled"
    assert await send("web") is None  # another key: its own count
    assert await send("web") == "throttled"
    assert await send("api", to=other) is None  # another subscriber: its own count
    assert sorted(r.form["Body"] for r in fresh_provider.requests("twilio")) == [
        "Hi api",
        "Hi api",
        "Hi web",
    ]


async def test_throttle_key_that_cannot_render_counts_as_keyless(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    """An event lacking the key's field is still accepted (it used to be a 500)."""
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100")
    await herald.put_flow(
        "builds",
        event_type="build.failed",
        steps=[SMS],
        throttle={"limit": 1, "period": "PT1H", "key": "{{ data.project.id }}"},
    )
    reasons = []
    for data in ({"n": "a"}, {"n": "b"}, {"n": "c", "project": {"id": "p1"}}):
        accepted = await herald.publish(type="build.failed", to=[sub], data=data)
        reasons.append((await finish(herald, accepted["id"]))["notifications"][0]["stop_reason"])
    assert reasons == [None, "throttled", None]
    assert len(fresh_provider.requests("twilio")) == 2


# --- cancellation ------------------------------------------------------------------------


async def test_cancel_skips_the_rest_and_wakes_the_workflow(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com", phone="+14155550100")
    await herald.put_flow(
        "order",
        event_type="order.placed",
        steps=[EMAIL, {"type": "delay", "duration": "PT1H"}, SMS],
    )
    key = unique("order")
    accepted = await herald.publish(
        type="order.placed", to=[sub], data={"order": "42", "n": 1}, cancellation_key=key
    )
    (ref,) = accepted["notifications"]
    event = await poll_event(herald, accepted["id"], lambda e: deliveries(e)[0]["status"] == "sent")
    assert event["cancellation_key"] == key
    assert [d["status"] for d in deliveries(event)] == ["sent", "pending"]

    # The workflow is asleep in the one-hour delay.
    handle = herald.client.get_workflow_handle_for(NotificationWorkflow.run, ref["workflow_id"])
    view = await handle.query(NotificationWorkflow.status)
    assert (view.current_step, view.steps[1].state) == (1, "waiting")

    r = await herald.http.post("/v1/events/cancel", json={"cancellation_key": key})
    assert r.status_code == 200, r.text
    assert r.json() == {"cancelled": [ref["id"]]}

    started = asyncio.get_running_loop().time()
    result = await asyncio.wait_for(handle.result(), 10)
    assert asyncio.get_running_loop().time() - started < 10
    assert [(d.channel.value, d.status.value) for d in result.deliveries] == [
        ("email", "sent"),
        ("sms", "skipped"),
    ]

    done = (await herald.http.get(f"/v1/events/{accepted['id']}")).json()
    (n,) = done["notifications"]
    assert "cancelled" in n["stop_reason"] and key in n["stop_reason"]
    email, sms = n["deliveries"]
    assert email["status"] == "sent"
    assert sms["status"] == "skipped"
    assert "cancelled" in sms["reason"]
    assert n["status"] == "sent"
    assert len(fresh_provider.requests("sendgrid")) == 1
    assert fresh_provider.requests("twilio") == []
    # Cancelling again finds nothing left to stop.
    again = await herald.http.post("/v1/events/cancel", json={"cancellation_key": key})
    assert again.json() == {"cancelled": []}


async def test_cancel_with_an_unknown_key_cancels_nothing(herald: Herald) -> None:
    r = await herald.http.post("/v1/events/cancel", json={"cancellation_key": unique("nope")})
    assert r.status_code == 200, r.text
    assert r.json() == {"cancelled": []}
    empty = await herald.http.post("/v1/events/cancel", json={"cancellation_key": ""})
    assert empty.status_code == 422


# --- quiet hours -------------------------------------------------------------------------


async def _quiet_subscriber(herald: Herald) -> tuple[str, datetime]:
    """A subscriber in UTC whose quiet hours cover now; returns it and when they end."""
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100", timezone="UTC")
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    r = await herald.http.put(
        f"/v1/subscribers/{sub}/preferences",
        json={"quiet_hours": {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["quiet_hours"] == {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"}
    return sub, end.replace(second=0, microsecond=0)


async def test_quiet_hours_schedule_a_non_critical_send(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub, ends = await _quiet_subscriber(herald)
    await herald.put_flow("digest-sms", event_type="news.posted", steps=[SMS])
    accepted = await herald.publish(type="news.posted", to=[sub], data={"n": 1})
    (ref,) = accepted["notifications"]
    handle = herald.client.get_workflow_handle_for(NotificationWorkflow.run, ref["workflow_id"])
    try:
        event = await poll_event(
            herald, accepted["id"], lambda e: deliveries(e)[0]["status"] == "scheduled"
        )
        (d,) = deliveries(event)
        scheduled_for = datetime.fromisoformat(d["scheduled_for"])
        assert abs(scheduled_for - ends) < timedelta(minutes=1), (scheduled_for, ends)
        assert "quiet hours" in d["reason"]
        assert event["notifications"][0]["status"] == "running"

        view = await handle.query(NotificationWorkflow.status)
        (step,) = view.steps
        assert view.current_step == 0
        assert step.state == "scheduled", step
        assert step.until is not None and abs(step.until - ends) < timedelta(minutes=1)
        assert "quiet hours" in (step.detail or "")

        await asyncio.sleep(0.5)  # nothing goes out meanwhile
        assert fresh_provider.requests("twilio") == []
    finally:
        await handle.terminate("test over")


async def test_quiet_hours_do_not_hold_a_critical_send(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub, _ = await _quiet_subscriber(herald)
    await herald.put_flow("otp", event_type="auth.otp", critical=True, steps=[SMS])
    event = await herald.wait_event(
        (await herald.publish(type="auth.otp", to=[sub], data={"n": 7}))["id"]
    )
    (d,) = deliveries(event)
    assert (d["status"], d["scheduled_for"]) == ("sent", None)
    (req,) = fresh_provider.requests("twilio")
    assert req.form["Body"] == "Hi 7"
