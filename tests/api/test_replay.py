"""Replay from the event store: a flow added today runs over last week's events, once."""

from __future__ import annotations

from tests.conftest import Herald, unique
from tests.fakes.provider import FakeProvider
from tests.workflows.test_notification import visible

EMAIL = {"channel": "email", "subject": "Order {{ data.n }}", "text": "x"}
SMS = {"channel": "sms", "text": "Order {{ data.n }} shipped"}


async def test_new_flow_replays_past_events_exactly_once(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com", phone="+14155550100")
    await herald.put_flow("receipt", event_type="order.placed", steps=[EMAIL])
    past = [await herald.publish(type="order.placed", to=[sub], data={"n": n}) for n in range(3)]
    for a in past:
        await herald.wait_event(a["id"])
    await herald.put_flow("shipping-sms", event_type="order.placed", steps=[SMS])

    body = {"flow": "shipping-sms", "replay_id": "backfill-1", "type": "order.placed"}
    dry = (await herald.http.post("/v1/events/replay", json={**body, "dry_run": True})).json()
    assert (dry["dry_run"], dry["started"], len(dry["items"])) == (True, 0, 3)
    assert fresh_provider.requests("twilio") == []

    r = await herald.http.post("/v1/events/replay", json=body)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["started"] == 3
    assert {i["flow"] for i in result["items"]} == {"shipping-sms"}
    assert all(i["workflow_id"].endswith("/replay/backfill-1") for i in result["items"])
    for a in past:
        event = await herald.wait_event(a["id"])
        flows = {n["flow"]: n["status"] for n in event["notifications"]}
        assert flows == {"receipt": "sent", "shipping-sms": "sent"}
    await visible(herald.client, f'HeraldTenant="{herald.tenant}" AND HeraldReplay="backfill-1"', 3)

    again = (await herald.http.post("/v1/events/replay", json=body)).json()
    assert again["started"] == 0
    assert all(i["already_replayed"] for i in again["items"])
    bodies = sorted(r.form["Body"] for r in fresh_provider.requests("twilio"))
    assert bodies == [f"Order {n} shipped" for n in range(3)]
    assert len(fresh_provider.requests("sendgrid")) == 3  # the old flow was not replayed


async def test_single_event_replay_and_bad_requests(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    await herald.put_flow("receipt", event_type="order.placed", steps=[EMAIL])
    accepted = await herald.publish(type="order.placed", to=[sub], data={"n": 7})
    await herald.wait_event(accepted["id"])

    r = await herald.http.post(f"/v1/events/{accepted['id']}/replay")
    assert r.status_code == 200, r.text
    assert r.json()["started"] == 1
    event = await herald.wait_event(accepted["id"])
    assert [n["status"] for n in event["notifications"]] == ["sent", "sent"]
    assert len(fresh_provider.requests("sendgrid")) == 2

    assert (await herald.http.post("/v1/events/evt_nope/replay")).status_code == 404
    bad_flow = await herald.http.post("/v1/events/replay", json={"flow": "ghost"})
    assert bad_flow.status_code == 422
    assert bad_flow.json()["detail"][0]["loc"] == ["body", "flow"]
    mismatch = await herald.http.post(
        "/v1/events/replay", json={"flow": "receipt", "type": "user.signup"}
    )
    assert mismatch.status_code == 422
