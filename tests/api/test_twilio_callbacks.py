"""Twilio status callbacks into the API, signed with the auth token by the fake.

Each SMS goes out through the real twilio SDK with a StatusCallback URL naming its
delivery; the fake then calls back on that URL as Twilio would.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import text
from twilio.request_validator import RequestValidator

from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.callbacks import TWILIO_AUTH_TOKEN, twilio_callback
from tests.fakes.provider import FakeProvider, Recorded

STATUS = "/v1/providers/twilio/status"
PUBLIC = "https://herald.example.com/notify"


async def sent_sms(herald: Herald, provider: FakeProvider) -> tuple[str, Recorded]:
    event_type = f"{unique('otp')}.requested"
    await herald.put_flow(
        unique("otp"), event_type=event_type, steps=[{"channel": "sms", "text": "Code 1234"}]
    )
    sub = unique("user")
    await herald.put_subscriber(sub, phone="+14155550100")
    accepted = await herald.publish(type=event_type, to=[sub])
    event = await herald.wait_event(accepted["id"])
    [delivery] = event["notifications"][0]["deliveries"]
    assert delivery["status"] == "sent"
    [sms] = [r for r in provider.requests("twilio") if delivery["id"] in r.form["StatusCallback"]]
    assert delivery["provider_message_id"] == sms.message_id
    return delivery["id"], sms


async def call_back(
    herald: Herald, url: str, params: dict[str, str], headers: dict[str, str]
) -> httpx.Response:
    """Post where the proxy in front of Herald would: the route, with Twilio's query."""
    return await herald.http.post(f"{STATUS}?{urlsplit(url).query}", data=params, headers=headers)


def twilio_entries(d: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(e["status"], e["detail"]) for e in d["timeline"] if e["source"] == "twilio"]


def rollup(herald: Herald, counter: str) -> int:
    with herald.engine.connect() as conn:
        total = conn.execute(
            text(f"SELECT COALESCE(SUM({counter}), 0) FROM delivery_rollups WHERE tenant_id = :t"),
            {"t": herald.tenant},
        ).scalar_one()
    return int(total)


async def test_status_callback_under_public_url_then_sent_and_delivered(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(public_url=PUBLIC + "/")
    delivery_id, sms = await sent_sms(herald, fresh_provider)
    assert sms.form["StatusCallback"] == f"{PUBLIC}{STATUS}?delivery={delivery_id}"

    r = await call_back(herald, *twilio_callback(sms, "sent"))
    assert r.status_code == 204, r.text
    assert (await herald.delivery(delivery_id))["status"] == "sent"
    r = await call_back(herald, *twilio_callback(sms, "delivered"))
    assert r.status_code == 204, r.text

    d = await herald.delivery(delivery_id)
    assert d["status"] == "delivered" and d["delivered_at"] is not None
    assert twilio_entries(d) == [("sent", None), ("delivered", None)]
    assert rollup(herald, "delivered") == 1


@pytest.mark.parametrize(
    ("status", "code", "counter"),
    [("undelivered", 30003, "bounced"), ("failed", 30008, "failed")],
)
async def test_undelivered_and_failed_carry_the_error_code(
    herald: Herald, fresh_provider: FakeProvider, status: str, code: int, counter: str
) -> None:
    delivery_id, sms = await sent_sms(herald, fresh_provider)

    r = await call_back(herald, *twilio_callback(sms, status, error_code=code))

    assert r.status_code == 204, r.text
    d = await herald.delivery(delivery_id)
    assert (d["status"], d["reason"]) == (status, f"ErrorCode {code}")
    assert twilio_entries(d) == [(status, f"ErrorCode {code}")]
    assert rollup(herald, counter) == 1


async def test_the_same_sid_and_status_twice_counts_once(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, sms = await sent_sms(herald, fresh_provider)
    callback = twilio_callback(sms, "delivered")

    for _ in range(2):
        assert (await call_back(herald, *callback)).status_code == 204

    d = await herald.delivery(delivery_id)
    assert twilio_entries(d) == [("delivered", None)]
    assert rollup(herald, "delivered") == 1


async def test_forged_callbacks_change_nothing(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, sms = await sent_sms(herald, fresh_provider)
    url, params, headers = twilio_callback(sms, "failed", error_code=30008)
    wrong_token = RequestValidator("not-the-token").compute_signature(url, params)
    attempts = [
        ({**params}, {"Content-Type": headers["Content-Type"]}),  # unsigned
        (params, {**headers, "X-Twilio-Signature": wrong_token}),
        ({**params, "ErrorCode": "30003"}, headers),  # a parameter changed after signing
    ]

    for form, hdrs in attempts:
        r = await call_back(herald, url, form, hdrs)
        assert r.status_code == 403, r.text
    # The signature covers the URL: it cannot be replayed onto another delivery.
    r = await herald.http.post(f"{STATUS}?delivery=dlv_other", data=params, headers=headers)
    assert r.status_code == 403, r.text

    d = await herald.delivery(delivery_id)
    assert d["status"] == "sent" and twilio_entries(d) == []
    assert rollup(herald, "failed") == 0


async def test_unknown_messages_and_early_steps_are_acknowledged_without_storing(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    delivery_id, sms = await sent_sms(herald, fresh_provider)
    url = f"{herald.settings.base_url}{STATUS}?delivery=dlv_nobody"
    params = {"MessageSid": "SMnobody", "MessageStatus": "delivered", "AccountSid": "AC1"}
    signature = RequestValidator(TWILIO_AUTH_TOKEN).compute_signature(url, params)

    r = await call_back(herald, url, params, {"X-Twilio-Signature": signature})
    assert r.status_code == 204, r.text
    r = await call_back(herald, *twilio_callback(sms, "queued"))
    assert r.status_code == 204, r.text

    with herald.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT COUNT(*) FROM delivery_events WHERE external_id LIKE 'SMnobody%'")
        ).scalar_one()
    assert stored == 0
    d = await herald.delivery(delivery_id)
    assert d["status"] == "sent" and twilio_entries(d) == []
