"""`unless` on engagement with no wait in between, on the dev server.

A send that depends on an earlier one's engagement does not run alongside it, so the
condition is read after the earlier send is recorded.
"""

from __future__ import annotations

from tests.conftest import Herald, unique
from tests.fakes.provider import FakeProvider


async def test_sms_unless_delivered_is_skipped_after_a_webhook_2xx(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(
        sub, phone="+14155550100", webhook_url=fresh_provider.webhook_url("ops")
    )
    await herald.put_flow(
        "relay",
        event_type="build.failed",
        steps=[
            {"channel": "webhook"},
            {"channel": "sms", "text": "Build failed", "unless": "delivered"},
        ],
    )
    event = await herald.wait_event((await herald.publish(type="build.failed", to=[sub]))["id"])

    (n,) = event["notifications"]
    webhook, sms = n["deliveries"]
    assert webhook["status"] == "delivered"
    assert (sms["status"], sms["reason"]) == ("skipped", "an earlier send was delivered")
    assert fresh_provider.requests("twilio") == []


async def test_sms_unless_opened_goes_out_when_the_push_is_not_opened(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100", push_tokens=["tok-1"])
    await herald.put_flow(
        "alert",
        event_type="login.new_device",
        steps=[
            {"channel": "push", "title": "New sign-in", "body": "Was it you?"},
            {"channel": "sms", "text": "New sign-in", "unless": "opened"},
        ],
    )
    published = await herald.publish(type="login.new_device", to=[sub])
    event = await herald.wait_event(published["id"])

    (n,) = event["notifications"]
    assert [d["status"] for d in n["deliveries"]] == ["sent", "sent"]
    (push,) = fresh_provider.requests("fcm")
    (sms,) = fresh_provider.requests("twilio")
    assert push.received_at <= sms.received_at  # in order, not alongside
