"""SendGrid Event Webhook into the API: signed by the fake with a real P-256 key.

Each test sends a real email through the fake SendGrid, then posts the events SendGrid
would post about it (echoing the custom args and X-Message-Id) and reads the delivery.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.callbacks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sendgrid_event_id,
    sendgrid_events_for,
    sign_sendgrid_events,
    sign_sendgrid_payload,
)
from tests.fakes.provider import FakeProvider, Recorded

EVENTS = "/v1/providers/sendgrid/events"
CATEGORY = "newsletter"
EMAIL = {"channel": "email", "subject": "News", "text": "Hello", "html": "<p>Hello</p>"}


async def mail_flow(herald: Herald) -> str:
    event_type = f"{unique('news')}.posted"
    await herald.put_flow(unique("news"), event_type=event_type, category=CATEGORY, steps=[EMAIL])
    return event_type


async def send(
    herald: Herald, provider: FakeProvider, event_type: str, sub: str
) -> tuple[dict[str, Any], Recorded | None]:
    """Publish to ``sub``; the email delivery and the mail the fake received for it."""
    accepted = await herald.publish(type=event_type, to=[sub])
    event = await herald.wait_event(accepted["id"])
    [delivery] = event["notifications"][0]["deliveries"]
    mails = [
        r
        for r in provider.requests("sendgrid")
        if r.json["custom_args"]["herald_delivery_id"] == delivery["id"]
    ]
    return delivery, (mails[0] if mails else None)


async def sent_email(
    herald: Herald, provider: FakeProvider, email: str = "ada@example.com"
) -> tuple[str, Recorded, str, str]:
    """(delivery id, the recorded mail, subscriber id, event type) of one sent email."""
    event_type = await mail_flow(herald)
    sub = unique("user")
    await herald.put_subscriber(sub, email=email)
    delivery, mail = await send(herald, provider, event_type, sub)
    assert delivery["status"] == "sent" and mail is not None
    return delivery["id"], mail, sub, event_type


async def post(herald: Herald, events: list[dict[str, Any]]) -> httpx.Response:
    body, headers = sign_sendgrid_events(events)
    return await herald.http.post(EVENTS, content=body, headers=headers)


async def posted(herald: Herald, events: list[dict[str, Any]]) -> dict[str, Any]:
    r = await post(herald, events)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def sendgrid_entries(d: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(e["status"], e["detail"]) for e in d["timeline"] if e["source"] == "sendgrid"]


def at(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def rollup(herald: Herald, *counters: str) -> tuple[int, ...]:
    """The tenant's analytics counters, summed straight from the rollup table."""
    sums = ", ".join(f"COALESCE(SUM({c}), 0)" for c in counters)
    with herald.engine.connect() as conn:
        row = conn.execute(
            text(f"SELECT {sums} FROM delivery_rollups WHERE tenant_id = :t"), {"t": herald.tenant}
        ).one()
    return tuple(int(v) for v in row)


# --- the mappings -----------------------------------------------------------------


async def test_processed_delivered_open_click_move_forward_with_stage_times(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, mail, _, _ = await sent_email(herald, fresh_provider)
    t = int(time.time())
    events = sendgrid_events_for(
        mail,
        {"event": "processed", "timestamp": t},
        {"event": "delivered", "timestamp": t + 2, "response": "250 OK"},
        {"event": "open", "timestamp": t + 5},
        {"event": "click", "timestamp": t + 9, "url": "https://example.com/a?x=1"},
        {"event": "click", "timestamp": t + 12, "url": "https://example.com/b"},
    )

    assert await posted(herald, events) == {
        "received": 5,
        "stored": 5,
        "duplicates": 0,
        "unknown": 0,
        "ignored": 0,
    }

    d = await herald.delivery(delivery_id)
    assert d["status"] == "clicked"
    assert at(d["delivered_at"]) == datetime.fromtimestamp(t + 2, UTC)
    assert at(d["opened_at"]) == datetime.fromtimestamp(t + 5, UTC)
    assert at(d["clicked_at"]) == datetime.fromtimestamp(t + 9, UTC)
    assert [c["url"] for c in d["clicks"]] == ["https://example.com/a?x=1", "https://example.com/b"]
    assert {c["source"] for c in d["clicks"]} == {"sendgrid"}
    assert [s for s, _ in sendgrid_entries(d)] == [
        "processed",
        "delivered",
        "opened",
        "clicked",
        "clicked",
    ]
    assert rollup(herald, "delivered", "opened", "clicked") == (1, 1, 1)


async def test_deferred_is_history_then_delivered(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, mail, _, _ = await sent_email(herald, fresh_provider)

    await posted(herald, sendgrid_events_for(mail, "deferred"))
    assert (await herald.delivery(delivery_id))["status"] == "sent"
    # The signature is the authentication: no API key is needed (a wrong one is ignored).
    body, headers = sign_sendgrid_events(sendgrid_events_for(mail, "delivered"))
    r = await herald.http.post(
        EVENTS, content=body, headers={**headers, "Authorization": "Bearer not-a-key"}
    )
    assert r.status_code == 200, r.text

    d = await herald.delivery(delivery_id)
    assert d["status"] == "delivered"
    assert sendgrid_entries(d) == [("deferred", "451 4.7.1 Try again later"), ("delivered", None)]


async def test_dropped_fails_with_sendgrids_reason(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, mail, _, _ = await sent_email(herald, fresh_provider)

    await posted(herald, sendgrid_events_for(mail, {"event": "dropped", "reason": "Invalid"}))

    d = await herald.delivery(delivery_id)
    assert (d["status"], d["reason"]) == ("failed", "Invalid")
    assert d["failed_at"] is not None
    assert rollup(herald, "failed") == (1,)


async def test_hard_bounce_suppresses_the_address_until_it_changes(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, mail, sub, event_type = await sent_email(herald, fresh_provider)

    await posted(herald, sendgrid_events_for(mail, "bounce"))

    d = await herald.delivery(delivery_id)
    assert d["status"] == "bounced" and d["bounced_at"] is not None
    assert "550 5.1.1" in d["reason"]
    assert sendgrid_entries(d)[-1][0] == "bounced"

    later, none = await send(herald, fresh_provider, event_type, sub)
    assert later["status"] == "skipped" and none is None
    assert "hard bounce" in later["reason"] and "550 5.1.1" in later["reason"]

    await herald.put_subscriber(sub, email="ada.new@example.com")
    again, new_mail = await send(herald, fresh_provider, event_type, sub)
    assert again["status"] == "sent" and new_mail is not None
    assert new_mail.json["personalizations"][0]["to"][0]["email"] == "ada.new@example.com"


async def test_soft_bounce_does_not_suppress(herald: Herald, fresh_provider: FakeProvider) -> None:
    delivery_id, mail, sub, event_type = await sent_email(herald, fresh_provider)
    blocked = {"event": "bounce", "type": "blocked", "status": "4.0.0", "reason": "421 later"}

    await posted(herald, sendgrid_events_for(mail, blocked))

    d = await herald.delivery(delivery_id)
    assert (d["status"], d["reason"]) == ("bounced", "blocked: 4.0.0 421 later")
    later, _ = await send(herald, fresh_provider, event_type, sub)
    assert later["status"] == "sent"


async def test_spam_report_counts_delivery_and_suppresses(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, mail, sub, event_type = await sent_email(herald, fresh_provider)

    await posted(herald, sendgrid_events_for(mail, "spamreport"))

    d = await herald.delivery(delivery_id)
    assert d["status"] == "delivered"
    assert d["complained_at"] is not None and d["delivered_at"] is not None
    assert sendgrid_entries(d) == [("complained", None)]
    assert rollup(herald, "complained") == (1,)
    later, _ = await send(herald, fresh_provider, event_type, sub)
    assert later["status"] == "skipped" and "spam report" in later["reason"]


@pytest.mark.parametrize("name", ["unsubscribe", "group_unsubscribe"])
async def test_unsubscribe_turns_the_category_off(
    herald: Herald, fresh_provider: FakeProvider, name: str
) -> None:
    delivery_id, mail, sub, _ = await sent_email(herald, fresh_provider)

    await posted(herald, sendgrid_events_for(mail, name))

    d = await herald.delivery(delivery_id)
    assert d["unsubscribed_at"] is not None
    assert sendgrid_entries(d) == [("unsubscribed", None)]
    prefs = (await herald.http.get(f"/v1/subscribers/{sub}/preferences")).json()
    assert prefs["categories"] == {CATEGORY: False}


# --- duplicates, order, unknown messages, early callbacks ---------------------------


async def test_the_same_event_twice_counts_once(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, mail, _, _ = await sent_email(herald, fresh_provider)
    [delivered] = sendgrid_events_for(mail, "delivered")

    first = await posted(herald, [delivered, delivered])
    second = await posted(herald, [delivered])

    assert (first["stored"], first["duplicates"]) == (1, 1)
    assert (second["stored"], second["duplicates"]) == (0, 1)
    d = await herald.delivery(delivery_id)
    assert sendgrid_entries(d) == [("delivered", None)]
    assert rollup(herald, "delivered") == (1,)


async def test_delivered_after_open_keeps_opened_and_adds_history(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, mail, _, _ = await sent_email(herald, fresh_provider)
    t = int(time.time())

    await posted(herald, sendgrid_events_for(mail, {"event": "open", "timestamp": t + 5}))
    await posted(herald, sendgrid_events_for(mail, {"event": "delivered", "timestamp": t + 1}))

    d = await herald.delivery(delivery_id)
    assert d["status"] == "opened"
    assert [s for s, _ in sendgrid_entries(d)] == ["opened", "delivered"]
    assert rollup(herald, "delivered") == (1,)


async def test_unknown_messages_are_acknowledged_and_nothing_is_stored(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, mail, _, _ = await sent_email(herald, fresh_provider)
    stranger = {
        "event": "delivered",
        "herald_delivery_id": "dlv_nobody",
        "sg_message_id": "nobody.filter",
        "sg_event_id": sendgrid_event_id(),
    }
    # A real delivery claimed for another tenant is not applied either.
    [other_tenant] = sendgrid_events_for(mail, {"event": "open", "herald_tenant_id": "tenant-x"})
    [no_ids] = sendgrid_events_for(mail, {"event": "open"})
    for key in ("herald_delivery_id", "herald_tenant_id", "sg_message_id"):
        no_ids.pop(key)

    result = await posted(herald, [stranger, other_tenant, no_ids, {"event": "group_resubscribe"}])

    assert result == {"received": 4, "stored": 0, "duplicates": 0, "unknown": 3, "ignored": 1}
    ids = [stranger["sg_event_id"], other_tenant["sg_event_id"], no_ids["sg_event_id"]]
    with herald.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT COUNT(*) FROM delivery_events WHERE external_id IN (:a, :b, :c)"),
            dict(zip("abc", ids, strict=True)),
        ).scalar_one()
    assert stored == 0
    assert (await herald.delivery(delivery_id))["status"] == "sent"


async def test_a_callback_before_the_send_is_recorded_is_applied_later(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(queues=["workflows"])
    event_type = await mail_flow(herald)
    sub = unique("user")
    await herald.put_subscriber(sub, email="early@example.com")
    accepted = await herald.publish(type=event_type, to=[sub])
    event = await herald.wait_dispatched(accepted["id"])
    [delivery] = event["notifications"][0]["deliveries"]
    assert delivery["status"] == "pending"
    early = int(time.time()) - 30
    delivered = {
        "event": "delivered",
        "email": "early@example.com",
        "timestamp": early,
        "sg_event_id": sendgrid_event_id(),
        "sg_message_id": "not-yet-known.filter",
        "herald_delivery_id": delivery["id"],
        "herald_tenant_id": herald.tenant,
    }

    assert (await posted(herald, [delivered]))["stored"] == 1
    assert (await herald.delivery(delivery["id"]))["status"] == "pending"
    await herald.serve(["email"])
    await herald.wait_event(accepted["id"])

    d = await herald.delivery(delivery["id"])
    assert d["status"] == "delivered"
    assert at(d["delivered_at"]) == datetime.fromtimestamp(early, UTC)
    assert sendgrid_entries(d) == [("delivered", None)]
    assert rollup(herald, "delivered") == (1,)


async def test_a_batch_of_1000_events_is_one_request(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, mail, _, _ = await sent_email(herald, fresh_provider)
    t = int(time.time())
    opens = [{"event": "open", "timestamp": t + 3} for _ in range(987)]
    events = sendgrid_events_for(
        mail,
        {"event": "processed", "timestamp": t},
        {"event": "delivered", "timestamp": t + 1},
        *opens,
        {"event": "click", "timestamp": t + 4, "url": "https://example.com/x"},
    )
    events += [
        {"event": "open", "herald_delivery_id": f"dlv_gone{i}", "sg_event_id": sendgrid_event_id()}
        for i in range(10)
    ]
    assert len(events) == 1000

    result = await posted(herald, events)

    assert result == {"received": 1000, "stored": 990, "duplicates": 0, "unknown": 10, "ignored": 0}
    d = await herald.delivery(delivery_id)
    assert d["status"] == "clicked"
    assert len(sendgrid_entries(d)) == 990
    assert rollup(herald, "opened", "clicked") == (1, 1)


# --- refusals -----------------------------------------------------------------------


async def test_forged_unsigned_and_tampered_batches_change_nothing(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, mail, _, _ = await sent_email(herald, fresh_provider)
    events = sendgrid_events_for(mail, "bounce")
    body, headers = sign_sendgrid_events(events)
    other_key = ec.generate_private_key(ec.SECP256R1())
    tampered = body.replace(b'"bounce"', b'"spamreport"', 1)
    attempts = [
        (body, {"Content-Type": "application/json"}),  # unsigned
        (body, sign_sendgrid_payload(body, key=other_key)),  # signed by someone else
        (tampered, headers),  # the body changed after signing
        (body, {**headers, TIMESTAMP_HEADER: str(int(headers[TIMESTAMP_HEADER]) - 1)}),
        (body, {**headers, SIGNATURE_HEADER: "bm9wZQ=="}),
    ]

    for content, hdrs in attempts:
        r = await herald.http.post(EVENTS, content=content, headers=hdrs)
        assert r.status_code == 403, r.text

    d = await herald.delivery(delivery_id)
    assert d["status"] == "sent" and sendgrid_entries(d) == []
    assert rollup(herald, "bounced") == (0,)


async def test_a_signed_body_that_is_not_an_array_is_refused(herald: Herald) -> None:
    body = b'{"event": "delivered"}'

    r = await herald.http.post(EVENTS, content=body, headers=sign_sendgrid_payload(body))

    assert r.status_code == 400
    assert "JSON array" in r.json()["detail"]


async def test_without_a_configured_key_events_are_refused(
    herald_factory: HeraldFactory,
) -> None:
    herald = await herald_factory(sendgrid_webhook_public_key=None)

    r = await post(herald, [{"event": "delivered", "sg_event_id": sendgrid_event_id()}])

    assert r.status_code == 503
    assert "HERALD_SENDGRID_WEBHOOK_PUBLIC_KEY" in r.json()["detail"]
