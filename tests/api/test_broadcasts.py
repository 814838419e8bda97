"""Broadcasts to a topic, end to end on the dev server: every member once, nobody else."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import EventType

from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.provider import FakeProvider
from tests.histories import keep_history
from tests.workflows.test_notification import visible

EMAIL = {"channel": "email", "subject": "News for {{ subscriber.name }}", "text": "{{ data.n }}"}


async def _topic(herald: Herald, members: list[dict[str, Any]], key: str = "beta") -> None:
    r = await herald.http.post("/v1/subscribers/bulk", json={"subscribers": members})
    assert r.status_code == 200, r.text
    assert (await herald.http.put(f"/v1/topics/{key}", json={"name": key})).status_code == 200
    ids = [m["id"] for m in members]
    r = await herald.http.post(f"/v1/topics/{key}/subscribers", json={"subscribers": ids})
    assert r.status_code in (200, 201, 202), r.text


def _emailed(provider: FakeProvider) -> list[str]:
    """Every recipient of every SendGrid request (a batch has many personalizations)."""
    return [
        p["to"][0]["email"]
        for r in provider.requests("sendgrid")
        if r.status == 202
        for p in r.json["personalizations"]
    ]


def _members(n: int, **fields: Any) -> list[dict[str, Any]]:
    prefix = unique("m")
    return [
        {"id": f"{prefix}-{i:04d}", "email": f"{prefix}-{i}@example.com", "name": f"N{i}", **fields}
        for i in range(n)
    ]


async def _broadcast(herald: Herald, **body: Any) -> dict[str, Any]:
    r = await herald.http.post("/v1/broadcasts", json=body)
    assert r.status_code == 202, r.text
    result: dict[str, Any] = r.json()
    return result


async def _until_done(herald: Herald, broadcast_id: str, within: float = 60) -> dict[str, Any]:
    """Wait for the broadcast workflow, then for every notification it started."""
    body = (await herald.http.get(f"/v1/broadcasts/{broadcast_id}")).json()
    handle = herald.client.get_workflow_handle(body["workflow_id"])
    await asyncio.wait_for(handle.result(), within)
    deadline = asyncio.get_running_loop().time() + within
    while True:
        body = (await herald.http.get(f"/v1/broadcasts/{broadcast_id}")).json()
        if body["counts"]["pending"] == 0:
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.2)


async def test_every_member_gets_it_once_across_batches_and_runs(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    # Batches of 10 over 125 members: 13 batches, so the workflow continues-as-new once.
    herald = await herald_factory(broadcast_batch_size=10)
    await herald.put_flow("newsletter", event_type="news.weekly", steps=[EMAIL])
    members = _members(125)
    await _topic(herald, members)

    created = await _broadcast(herald, flow="newsletter", audience={"topic": "beta"}, data={"n": 7})
    assert (created["status"], created["total"]) == ("running", 125)
    done = await _until_done(herald, created["id"])

    assert done["status"] == "completed"
    assert (done["enrolled"], done["scanned"]) == (125, 125)
    assert done["counts"] == {"sent": 125, "failed": 0, "pending": 0, "skipped": {}}
    assert sorted(_emailed(fresh_provider)) == sorted(m["email"] for m in members)
    # Sends only: the fast path, one SendGrid request per batch of 10 personalizations
    # (the subject differs per person, the body does not), and no workflow per person.
    requests = fresh_provider.requests("sendgrid")
    assert [len(r.json["personalizations"]) for r in requests] == [10] * 12 + [5]
    first = requests[0].json["personalizations"][0]
    assert first["subject"].startswith("News for N")
    assert first["custom_args"]["herald_delivery_id"].startswith("dlv_")
    # Counted in the analytics rollups like any send: one upsert per batch, not per person.
    analytics = (await herald.http.get("/v1/analytics", params={"group_by": "flow"})).json()
    assert [(g["key"], g["sent"]) for g in analytics["groups"]] == [("newsletter", 125)]
    # The broadcast ran twice (continue-as-new after 10 batches), each run in the UI.
    tagged = f'HeraldTenant="{herald.tenant}" AND HeraldBroadcast="{created["id"]}"'
    await visible(herald.client, f'{tagged} AND WorkflowType="BroadcastWorkflow"', 2)
    await keep_history(herald.client, created["workflow_id"], "broadcast-fast-path")


async def test_a_flow_with_a_delay_gets_a_workflow_per_recipient(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    steps = [{"type": "delay", "duration": "PT1S"}, EMAIL]
    await herald.put_flow("drip", event_type="drip.start", steps=steps)
    members = _members(6)
    await _topic(herald, members)

    created = await _broadcast(herald, flow="drip", audience={"topic": "beta"})
    done = await _until_done(herald, created["id"])

    assert done["counts"]["sent"] == 6
    assert sorted(_emailed(fresh_provider)) == sorted(m["email"] for m in members)
    tagged = f'HeraldTenant="{herald.tenant}" AND HeraldBroadcast="{created["id"]}"'
    await visible(herald.client, f'{tagged} AND WorkflowType="NotificationWorkflow"', 6)
    await keep_history(herald.client, created["workflow_id"], "broadcast-per-recipient")


async def test_quiet_hours_hand_a_recipient_to_its_own_workflow(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    await herald.put_flow("promo", event_type="promo.quiet", steps=[EMAIL])
    members = _members(3)
    await _topic(herald, members)
    now = datetime.now(UTC)
    quiet = {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=2)).strftime("%H:%M"),
    }
    sleeper = members[0]["id"]
    r = await herald.http.put(f"/v1/subscribers/{sleeper}/preferences", json={"quiet_hours": quiet})
    assert r.status_code == 200, r.text

    created = await _broadcast(herald, flow="promo", audience={"topic": "beta"})
    handle = herald.client.get_workflow_handle(created["workflow_id"])
    await asyncio.wait_for(handle.result(), 30)

    assert sorted(_emailed(fresh_provider)) == sorted(m["email"] for m in members[1:])
    (n,) = await visible(
        herald.client,
        f'HeraldBroadcast="{created["id"]}" AND WorkflowType="NotificationWorkflow"',
        1,
    )
    assert n.endswith(f"/{sleeper}")
    deadline = asyncio.get_running_loop().time() + 20
    while (body := (await herald.http.get(f"/v1/broadcasts/{created['id']}")).json())["counts"][
        "pending"
    ] != 1 or body["counts"]["sent"] != 2:
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.2)
    # Its own workflow defers the send: pending until its first activity runs, then scheduled.
    while True:
        event = (await herald.http.get(f"/v1/events/{created['event_id']}")).json()
        (waiting,) = [x for x in event["notifications"] if x["subscriber_id"] == sleeper]
        if waiting["deliveries"][0]["status"] != "pending":
            break
        assert asyncio.get_running_loop().time() < deadline, waiting
        await asyncio.sleep(0.2)
    assert waiting["deliveries"][0]["status"] == "scheduled"


async def test_filters_opt_outs_and_idempotency(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    await herald.put_flow("promo", event_type="promo.sent", steps=[EMAIL])
    german = _members(4, locale="de")
    english = _members(3, locale="en")
    await _topic(herald, german + english)
    out = german[0]["id"]
    r = await herald.http.put(
        f"/v1/subscribers/{out}/preferences", json={"topics": {"beta": False}}
    )
    assert r.status_code == 200, r.text

    body = {
        "event_type": "promo.sent",
        "audience": {"topic": "beta", "where": {"locale": "de"}},
        "idempotency_key": "promo-1",
    }
    created = await _broadcast(herald, **body)
    again = await herald.http.post("/v1/broadcasts", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == created["id"]
    done = await _until_done(herald, created["id"])

    assert created["total"] == 4
    assert done["counts"]["sent"] == 3
    assert done["counts"]["skipped"] == {"opted out of the topic": 1}
    assert sorted(_emailed(fresh_provider)) == sorted(m["email"] for m in german[1:])


async def test_pause_resume_and_cancel(herald: Herald, fresh_provider: FakeProvider) -> None:
    await herald.put_flow("later", event_type="later.sent", steps=[EMAIL])
    await _topic(herald, _members(5))
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()

    paused = await _broadcast(herald, flow="later", audience={"topic": "beta"}, send_at=soon)
    assert paused["status"] == "scheduled"
    r = await herald.http.post(f"/v1/broadcasts/{paused['id']}/pause")
    assert r.json()["status"] == "paused"
    cancelled = await _broadcast(herald, flow="later", audience={"topic": "beta"}, send_at=soon)
    r = await herald.http.post(f"/v1/broadcasts/{cancelled['id']}/cancel")
    assert r.json()["status"] == "cancelled"
    assert (await herald.http.post(f"/v1/broadcasts/{cancelled['id']}/resume")).status_code == 409

    await asyncio.sleep(3)  # past send_at: the paused one waits, the cancelled one ended
    handle = herald.client.get_workflow_handle(cancelled["workflow_id"])
    assert (await asyncio.wait_for(handle.result(), 20))["status"] == "cancelled"
    assert fresh_provider.requests("sendgrid") == []
    assert (await herald.http.get(f"/v1/broadcasts/{paused['id']}")).json()["enrolled"] == 0

    r = await herald.http.post(f"/v1/broadcasts/{paused['id']}/resume")
    assert r.json()["status"] == "running"
    done = await _until_done(herald, paused["id"])
    assert done["counts"]["sent"] == 5
    assert len(_emailed(fresh_provider)) == 5
    await keep_history(herald.client, paused["workflow_id"], "broadcast-paused-resumed")


async def test_a_provider_outage_pauses_the_broadcast_and_resume_sends_the_rest(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    fast = {"initial_interval": 0.1, "backoff_coefficient": 1, "maximum_attempts": 2}
    herald = await herald_factory(broadcast_batch_size=4, retry_email=fast)
    await herald.put_flow("sale", event_type="promo.sale", steps=[EMAIL])
    members = _members(10)
    await _topic(herald, members)
    # The second batch of four (N4..N7) gets 503 until the fault is cleared; the others
    # go out (the third one may, being sent alongside the second).
    fresh_provider.fail("sendgrid", 503, times=None, when="N5")

    created = await _broadcast(herald, flow="sale", audience={"topic": "beta"})
    deadline = asyncio.get_running_loop().time() + 30
    while (body := (await herald.http.get(f"/v1/broadcasts/{created['id']}")).json())[
        "status"
    ] != "paused":
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.2)
    # Paused, not failed: the workflow is still running, nobody was marked failed.
    handle = herald.client.get_workflow_handle(created["workflow_id"])
    metadata = await handle.query("__temporal_workflow_metadata")
    assert metadata.current_details.startswith("paused: a batch failed"), metadata
    assert body["counts"]["failed"] == 0
    # The first batch, and the third (sent alongside the second), may still be on their way
    # when the pause is seen on a loaded machine: let them land.
    first = {m["email"] for m in members[:4]}
    deadline = asyncio.get_running_loop().time() + 30

    def landed(emailed: list[str]) -> bool:
        return first <= set(emailed) and body["counts"]["sent"] == len(emailed)

    while not landed(emailed := _emailed(fresh_provider)):
        assert asyncio.get_running_loop().time() < deadline, (body, emailed)
        await asyncio.sleep(0.2)
        body = (await herald.http.get(f"/v1/broadcasts/{created['id']}")).json()
    assert body["counts"]["sent"] == len(emailed) == body["total"] - body["counts"]["pending"]
    assert not set(m["email"] for m in members[4:8]) & set(emailed)

    fresh_provider.clear_faults()
    r = await herald.http.post(f"/v1/broadcasts/{created['id']}/resume")
    assert r.status_code == 200, r.text
    done = await _until_done(herald, created["id"])
    assert done["status"] == "completed"
    assert done["counts"] == {"sent": 10, "failed": 0, "pending": 0, "skipped": {}}
    # Everyone exactly once: the retried batch did not resend what had gone out.
    assert sorted(_emailed(fresh_provider)) == sorted(m["email"] for m in members)


async def test_a_dead_letter_of_the_fast_path_is_retried_through_its_own_workflow(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    await herald.put_flow("promo", event_type="promo.once", steps=[EMAIL])
    members = _members(3)
    await _topic(herald, members)
    fresh_provider.fail("sendgrid", 400, times=1)  # the batch's one request is refused

    created = await _broadcast(herald, flow="promo", audience={"topic": "beta"})
    done = await _until_done(herald, created["id"])
    assert done["counts"]["failed"] == 3
    assert _emailed(fresh_provider) == []
    # Sent without a notification workflow: its retry starts one, which sends it again.
    r = await herald.http.get("/v1/deliveries", params={"flow": "promo"})
    dead = {d["subscriber_id"]: d for d in r.json()}
    first = dead[members[0]["id"]]
    r = await herald.http.post(f"/v1/notifications/{first['notification_id']}/retry")
    assert r.status_code == 202, r.text
    handle = herald.client.get_workflow_handle(first["workflow_id"])
    await asyncio.wait_for(handle.result(), 30)
    assert _emailed(fresh_provider) == [members[0]["email"]]
    assert (await herald.delivery(first["delivery_id"]))["status"] == "sent"
    tagged = f'HeraldBroadcast="{created["id"]}" AND WorkflowType="NotificationWorkflow"'
    await visible(herald.client, tagged, 1)
    # Done now: a second retry has nothing left to do.
    r = await herald.http.post(f"/v1/notifications/{first['notification_id']}/retry")
    assert r.status_code == 409, r.text
    # The bulk retry takes the other two the same way.
    r = await herald.http.post("/v1/deliveries/retry", json={"flow": "promo"})
    assert r.status_code == 202, r.text
    assert sorted(r.json()["notifications"]) == sorted(
        dead[m["id"]]["notification_id"] for m in members[1:]
    )
    await _until_done(herald, created["id"])
    deadline = asyncio.get_running_loop().time() + 30
    while len(_emailed(fresh_provider)) < 3:
        assert asyncio.get_running_loop().time() < deadline, _emailed(fresh_provider)
        await asyncio.sleep(0.1)
    assert sorted(_emailed(fresh_provider)) == sorted(m["email"] for m in members)


async def test_bad_requests_name_the_field(herald: Herald) -> None:
    await herald.put_flow("x", event_type="x.y", steps=[EMAIL])
    cases = [
        ({"flow": "x", "event_type": "x.y", "audience": {"topic": "t"}}, ["body", "flow"]),
        ({"flow": "nope", "audience": {"topic": "t"}}, ["body", "flow"]),
        ({"flow": "x", "audience": {"topic": "missing"}}, ["body", "audience", "topic"]),
        ({"flow": "x", "audience": {"topic": "t", "where": {"shoe": 1}}}, None),
    ]
    for body, loc in cases:
        r = await herald.http.post("/v1/broadcasts", json=body)
        assert r.status_code == 422, r.text
        (err,) = r.json()["detail"]
        if loc is not None:
            assert err["loc"] == loc, err
        else:
            assert err["loc"][:3] == ["body", "audience", "where"], err
            assert "shoe" in str(err["loc"]) + err["msg"]


async def test_send_at_is_a_durable_timer(herald: Herald, fresh_provider: FakeProvider) -> None:
    await herald.put_flow("timed", event_type="timed.sent", steps=[EMAIL])
    await _topic(herald, _members(3))
    at = datetime.now(UTC) + timedelta(seconds=2)

    created = await _broadcast(
        herald, flow="timed", audience={"topic": "beta"}, send_at=at.isoformat()
    )
    assert (created["status"], created["enrolled"]) == ("scheduled", 0)
    assert fresh_provider.requests("sendgrid") == []
    done = await _until_done(herald, created["id"])

    assert done["counts"]["sent"] == 3
    assert min(r.received_at for r in fresh_provider.requests("sendgrid")) >= at.timestamp()
    handle = herald.client.get_workflow_handle(created["workflow_id"])
    timers = [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]
    assert len(timers) == 1 and timedelta(seconds=1) < timers[0] <= timedelta(seconds=2)
