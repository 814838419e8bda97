"""The events contract: idempotency, validation, fan-out, preferences, tenancy."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from store.models import Event, Notification
from tests.conftest import Herald, HeraldFactory, recorded_statements, unique
from tests.fakes.provider import FakeProvider

EMAIL_STEP = {"channel": "email", "subject": "Hello {{ subscriber.name }}", "text": "Body"}
SMS_STEP = {"channel": "sms", "text": "Code {{ data.code }}"}


def count(herald: Herald, model: type, **where: object) -> int:
    with Session(herald.engine) as s:
        stmt = select(func.count()).select_from(model)
        stmt = stmt.where(model.tenant_id == herald.tenant)  # type: ignore[attr-defined]
        for name, value in where.items():
            stmt = stmt.where(getattr(model, name) == value)
        return int(s.exec(stmt).one())


async def test_repeated_idempotency_key_returns_first_result_and_sends_once(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email="a@example.com", name="A")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL_STEP])
    body = {"type": "user.signup", "to": [sub], "data": {"plan": "pro"}}
    headers = {"Idempotency-Key": "signup-42"}

    first = await herald.http.post("/v1/events", json=body, headers=headers)
    assert first.status_code == 202, first.text
    await herald.wait_event(first.json()["id"])

    again = await herald.http.post("/v1/events", json=body, headers=headers)
    assert again.status_code == 200
    assert again.json() == first.json()
    # The key may also travel in the body.
    in_body = await herald.http.post("/v1/events", json={**body, "idempotency_key": "signup-42"})
    assert in_body.status_code == 200
    assert in_body.json() == first.json()

    assert len(fresh_provider.requests("sendgrid")) == 1
    assert count(herald, Event) == 1
    assert count(herald, Notification) == 1


async def test_idempotency_key_reused_with_other_body_is_409(herald: Herald) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email="a@example.com")
    headers = {"Idempotency-Key": "k-1"}
    ok = await herald.http.post("/v1/events", json={"type": "a.b", "to": [sub]}, headers=headers)
    assert ok.status_code == 202
    clash = await herald.http.post(
        "/v1/events", json={"type": "a.b", "to": [sub], "data": {"x": 1}}, headers=headers
    )
    assert clash.status_code == 409
    assert "k-1" in clash.json()["detail"]
    mismatch = await herald.http.post(
        "/v1/events", json={"type": "a.b", "to": [sub], "idempotency_key": "other"}, headers=headers
    )
    assert mismatch.status_code == 422
    assert mismatch.json()["detail"][0]["loc"] == ["body", "idempotency_key"]
    assert count(herald, Event) == 1


async def test_unknown_subscriber_is_422_naming_it_and_stores_nothing(herald: Herald) -> None:
    known = unique("u")
    await herald.put_subscriber(known, email="k@example.com")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL_STEP])
    r = await herald.http.post(
        "/v1/events",
        json={
            "type": "user.signup",
            "to": [known, known, "ghost", {"id": "inline-1", "email": "i@x.io"}],
        },
    )
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "to", 2]  # its position in the request as sent
    assert "ghost" in err["msg"]
    assert count(herald, Event) == 0
    assert count(herald, Notification) == 0
    # The inline subscriber in the rejected request was not kept either.
    assert (await herald.http.get("/v1/subscribers/inline-1")).status_code == 404


async def test_bad_event_fields_are_422_naming_the_field(herald: Herald) -> None:
    cases: list[tuple[dict[str, Any], list[str | int]]] = [
        ({"type": "has space", "to": ["a"]}, ["body", "type"]),
        ({"type": "a.b", "to": []}, ["body", "to"]),
        ({"type": "a.b"}, ["body", "to"]),
        ({"type": "a.b", "to": [{"id": "x", "email": "not-an-email"}]}, ["body", "to", 0]),
        ({"type": "a.b", "to": ["a"], "data": "nope"}, ["body", "data"]),
    ]
    for body, loc in cases:
        r = await herald.http.post("/v1/events", json=body)
        assert r.status_code == 422, body
        locs = [e["loc"][: len(loc)] for e in r.json()["detail"]]
        assert loc in locs, (body, r.json())
    assert count(herald, Event) == 0


async def test_inline_subscriber_is_upserted_and_delivered(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    await herald.put_flow("otp", event_type="auth.otp", steps=[SMS_STEP])
    sid = unique("u")
    accepted = await herald.publish(
        type="auth.otp", to=[{"id": sid, "phone": "+14155550123"}], data={"code": "991"}
    )
    event = await herald.wait_event(accepted["id"])
    assert event["notifications"][0]["deliveries"][0]["status"] == "sent"
    (sms,) = fresh_provider.requests("twilio")
    assert (sms.form["To"], sms.form["Body"]) == ("+14155550123", "Code 991")
    stored = await herald.http.get(f"/v1/subscribers/{sid}")
    assert stored.json()["phone"] == "+14155550123"


async def test_event_without_flow_is_stored_with_no_notifications(herald: Herald) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub)
    accepted = await herald.publish(type="nobody.listens", to=[sub], data={"k": "v"})
    assert accepted["notifications"] == []
    stored = (await herald.http.get(f"/v1/events/{accepted['id']}")).json()
    assert stored["type"] == "nobody.listens"
    assert stored["data"] == {"k": "v"}
    assert stored["notifications"] == []


async def test_one_event_type_fans_out_to_each_flow_and_recipient(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    subs = [unique("u") for _ in range(2)]
    for s in subs:
        await herald.put_subscriber(s, email=f"{s}@example.com", phone="+14155550100")
    await herald.put_flow("receipt", event_type="order.placed", steps=[EMAIL_STEP])
    await herald.put_flow("ops-sms", event_type="order.placed", steps=[SMS_STEP])
    accepted = await herald.publish(type="order.placed", to=[*subs, subs[0]], data={"code": 1})
    pairs = {(n["flow"], n["subscriber_id"]) for n in accepted["notifications"]}
    assert pairs == {(f, s) for f in ("receipt", "ops-sms") for s in subs}
    assert len({n["workflow_id"] for n in accepted["notifications"]}) == 4
    await herald.wait_event(accepted["id"])
    assert len(fresh_provider.requests("sendgrid")) == 2
    assert len(fresh_provider.requests("twilio")) == 2


async def test_opt_out_is_skipped_with_reason_and_critical_flow_ignores_it(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email="a@example.com", phone="+14155550100")
    r = await herald.http.put(
        f"/v1/subscribers/{sub}/preferences", json={"channels": {"sms": False}}
    )
    assert r.status_code == 200, r.text
    await herald.put_flow("promo", event_type="promo.sent", steps=[EMAIL_STEP, SMS_STEP])
    await herald.put_flow(
        "fraud", event_type="fraud.alert", critical=True, category="security", steps=[SMS_STEP]
    )

    promo = await herald.wait_event((await herald.publish(type="promo.sent", to=[sub]))["id"])
    deliveries = {d["channel"]: d for d in promo["notifications"][0]["deliveries"]}
    assert deliveries["email"]["status"] == "sent"
    assert deliveries["sms"]["status"] == "skipped"
    assert "opted out of sms" in deliveries["sms"]["reason"]
    assert promo["notifications"][0]["status"] == "sent"

    fraud = await herald.wait_event((await herald.publish(type="fraud.alert", to=[sub]))["id"])
    assert fraud["notifications"][0]["deliveries"][0]["status"] == "sent"
    assert len(fresh_provider.requests("twilio")) == 1  # only the critical one


async def test_missing_address_is_skipped_with_reason(herald: Herald) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email="a@example.com")
    await herald.put_flow("otp", event_type="auth.otp", steps=[SMS_STEP])
    event = await herald.wait_event((await herald.publish(type="auth.otp", to=[sub]))["id"])
    (n,) = event["notifications"]
    assert n["status"] == "skipped"
    assert n["deliveries"][0]["reason"] == "subscriber has no phone number"


async def test_preferences_are_read_when_the_step_runs_not_at_publish(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(queues=["workflows"])  # email queue not served yet
    sub = unique("u")
    await herald.put_subscriber(sub, email="a@example.com")
    await herald.put_flow("news", event_type="news.posted", steps=[EMAIL_STEP])
    accepted = await herald.publish(type="news.posted", to=[sub])
    opt_out = await herald.http.put(
        f"/v1/subscribers/{sub}/preferences", json={"flows": {"news": {"email": False}}}
    )
    assert opt_out.status_code == 200
    await herald.serve(["email"])
    event = await herald.wait_event(accepted["id"])
    delivery = event["notifications"][0]["deliveries"][0]
    assert delivery["status"] == "skipped"
    assert "flow 'news'" in delivery["reason"]
    assert fresh_provider.requests("sendgrid") == []


async def test_concurrent_posts_share_a_commit_and_each_gets_its_own_answer(
    herald: Herald,
) -> None:
    """A burst is stored a batch at a time (one INSERT of events for many), yet each request
    is answered as if alone: a repeated key is the first event, an unknown recipient a 422.
    (A refusal redoes its batch an event at a time, so it is posted after the burst.)"""
    sub = unique("u")
    await herald.put_subscriber(sub, email="a@example.com")
    await herald.put_flow("burst", event_type="burst.test", steps=[SMS_STEP])

    def post(to: str, key: str) -> Any:
        body = {"type": "burst.test", "to": [to], "data": {"code": key}}
        return herald.http.post("/v1/events", json=body, headers={"Idempotency-Key": key})

    keys = [unique("k") for _ in range(12)]
    with recorded_statements(herald.app.state.engine) as statements:
        *fresh, repeated = await asyncio.gather(*(post(sub, k) for k in keys), post(sub, keys[0]))
    inserts = [s for s in statements if s.upper().startswith("INSERT INTO EVENTS")]
    unknown = await post("nobody", unique("k"))
    assert [a.status_code for a in fresh[1:]] == [202] * 11, [a.text for a in fresh]
    # The same key twice at once: whichever came first stored it, the other gets it back.
    assert sorted([fresh[0].status_code, repeated.status_code]) == [200, 202]
    assert repeated.json()["id"] == fresh[0].json()["id"]
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "to", 0]
    assert len({a.json()["id"] for a in fresh}) == 12
    assert count(herald, Event, type="burst.test") == 12
    assert count(herald, Notification, flow_key="burst") == 12
    assert len(inserts) < 12  # shared: one per transaction, not one per event
