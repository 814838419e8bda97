"""One event through the API, Temporal and the real SDKs into the fake provider."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from tests.conftest import Herald, unique
from tests.fakes.provider import FakeProvider

FOUR_CHANNELS: list[dict[str, Any]] = [
    {
        "channel": "email",
        "subject": "Order {{ data.order_id }} confirmed",
        "text": "Hi {{ subscriber.name }}, total {{ data.total }}",
        "html": "<p>Hi {{ subscriber.name }}</p>",
    },
    {"channel": "sms", "text": "Order {{ data.order_id }} is confirmed"},
    {
        "channel": "push",
        "title": "Order {{ data.order_id }}",
        "body": "Thanks {{ subscriber.name }}",
    },
    {"channel": "webhook"},
]


def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return f"v1,{expected}" in headers["webhook-signature"].split(" ")


async def test_one_event_reaches_all_four_providers(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("user")
    await herald.put_subscriber(
        sub,
        email="ada@example.com",
        phone="+14155550100",
        push_tokens=["device-token-1"],
        webhook_url=fresh_provider.webhook_url(sub),
        name="Ada",
    )
    await herald.put_flow("order-confirmed", event_type="order.placed", steps=FOUR_CHANNELS)

    accepted = await herald.publish(
        type="order.placed", to=[sub], data={"order_id": "A-17", "total": "42.00"}
    )
    assert len(accepted["notifications"]) == 1
    event = await herald.wait_event(accepted["id"])

    (notification,) = event["notifications"]
    assert notification["status"] == "sent"
    by_channel = {d["channel"]: d for d in notification["deliveries"]}
    assert {c: d["status"] for c, d in by_channel.items()} == {
        "email": "sent",
        "sms": "sent",
        "push": "sent",
        # A receiver's 2xx proves delivery; the providers' receipts come later, by callback.
        "webhook": "delivered",
    }
    assert by_channel["webhook"]["delivered_at"] is not None
    assert by_channel["email"]["sent_at"] is not None
    assert by_channel["email"]["provider"] == "sendgrid"
    assert by_channel["sms"]["provider"] == "twilio"
    assert by_channel["push"]["provider"] == "fcm"
    assert by_channel["webhook"]["provider"] == "webhook"
    assert all(d["provider_message_id"] for d in by_channel.values())

    (mail,) = fresh_provider.requests("sendgrid")
    assert mail.json["subject"] == "Order A-17 confirmed"
    assert mail.json["personalizations"][0]["to"][0]["email"] == "ada@example.com"
    contents = {c["type"]: c["value"] for c in mail.json["content"]}
    assert contents["text/plain"] == "Hi Ada, total 42.00"
    # Herald's own open tracking adds a pixel under HERALD_PUBLIC_URL to the HTML part.
    assert contents["text/html"].startswith("<p>Hi Ada</p>")
    assert f'src="{herald.settings.base_url}/t/o/' in contents["text/html"]
    assert mail.json["custom_args"]["herald_delivery_id"] == by_channel["email"]["id"]

    (sms,) = fresh_provider.requests("twilio")
    assert sms.form["To"] == "+14155550100"
    assert sms.form["Body"] == "Order A-17 is confirmed"

    (push,) = fresh_provider.requests("fcm")
    msg = push.json["message"]
    assert msg["token"] == "device-token-1"
    assert msg["notification"] == {"title": "Order A-17", "body": "Thanks Ada"}

    (hook,) = fresh_provider.requests("webhook")
    secret = herald.settings.webhook_secret.get_secret_value()
    assert verify_standard_webhook(secret, hook.headers, hook.body)
    assert hook.headers["webhook-id"] == by_channel["webhook"]["id"]
    assert hook.json["type"] == "order.placed"
    assert hook.json["data"] == {"order_id": "A-17", "total": "42.00"}
    assert hook.json["subscriber_id"] == sub
