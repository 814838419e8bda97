"""Permanent errors that say something about the subscriber are remembered."""

from __future__ import annotations

from tests.conftest import Herald, unique
from tests.fakes.provider import (
    FakeProvider,
    fcm_error_body,
    fcm_error_status,
    twilio_error_body,
)


async def test_twilio_unsubscribed_opts_the_subscriber_out_of_sms(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100")
    await herald.put_flow("otp", event_type="auth.otp", steps=[{"channel": "sms", "text": "x"}])
    fresh_provider.fail("twilio", 400, body=twilio_error_body(21610, "Unsubscribed recipient"))
    event = await herald.wait_event((await herald.publish(type="auth.otp", to=[sub]))["id"])
    (d,) = event["notifications"][0]["deliveries"]
    assert (d["status"], d["attempts"]) == ("failed", 1)
    assert "21610" in d["reason"]
    prefs = (await herald.http.get(f"/v1/subscribers/{sub}/preferences")).json()
    assert prefs["channels"] == {"sms": False}
    # The next SMS is skipped by preference, never sent to Twilio.
    again = await herald.wait_event((await herald.publish(type="auth.otp", to=[sub]))["id"])
    assert again["notifications"][0]["deliveries"][0]["status"] == "skipped"
    assert len(fresh_provider.requests("twilio")) == 1


async def test_webhook_410_disables_the_subscribers_url(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, webhook_url=fresh_provider.webhook_url(sub))
    await herald.put_flow("hook", event_type="a.b", steps=[{"channel": "webhook"}])
    fresh_provider.fail("webhook", 410)
    event = await herald.wait_event((await herald.publish(type="a.b", to=[sub]))["id"])
    (d,) = event["notifications"][0]["deliveries"]
    assert (d["status"], d["attempts"]) == ("failed", 1)
    assert (await herald.http.get(f"/v1/subscribers/{sub}")).json()["webhook_url"] is None
    again = await herald.wait_event((await herald.publish(type="a.b", to=[sub]))["id"])
    assert again["notifications"][0]["deliveries"][0]["reason"] == "subscriber has no webhook URL"
    assert len(fresh_provider.requests("webhook")) == 1


async def test_retry_after_is_honoured_between_attempts(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    await herald.put_flow(
        "welcome",
        event_type="user.signup",
        steps=[
            {
                "channel": "email",
                "subject": "s",
                "text": "t",
                "retry": {"initial_interval": "PT0.1S"},
            }
        ],
    )
    fresh_provider.fail("sendgrid", 429, headers={"Retry-After": "3"})
    event = await herald.wait_event(
        (await herald.publish(type="user.signup", to=[sub]))["id"], within=30
    )
    assert event["notifications"][0]["deliveries"][0]["status"] == "sent"
    first, second = fresh_provider.requests("sendgrid")
    assert (first.status, second.status) == (429, 202)
    assert second.received_at - first.received_at >= 3.0


async def test_fcm_dead_tokens_are_removed_and_live_ones_kept(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, push_tokens=["tok-live", "tok-gone", "tok-bad"])
    await herald.put_flow(
        "ping", event_type="a.ping", steps=[{"channel": "push", "title": "t", "body": "b"}]
    )
    code = "UNREGISTERED"
    fresh_provider.fail(
        "fcm", fcm_error_status(code), body=fcm_error_body(code), when="tok-gone", times=None
    )
    fresh_provider.fail("fcm", 404, when="tok-bad", times=None)  # NOT_FOUND, no FcmError
    event = await herald.wait_event((await herald.publish(type="a.ping", to=[sub]))["id"])
    (d,) = event["notifications"][0]["deliveries"]
    assert d["status"] == "sent"  # one live token is enough
    assert (await herald.http.get(f"/v1/subscribers/{sub}")).json()["push_tokens"] == ["tok-live"]

    # With only dead tokens left, the send fails at once and the tokens are gone too.
    await herald.put_subscriber(sub, push_tokens=["tok-gone"])
    event = await herald.wait_event((await herald.publish(type="a.ping", to=[sub]))["id"])
    (d,) = event["notifications"][0]["deliveries"]
    assert (d["status"], d["attempts"]) == ("failed", 1)
    assert "UNREGISTERED" in d["reason"]
    assert (await herald.http.get(f"/v1/subscribers/{sub}")).json()["push_tokens"] == []


async def test_fcm_invalid_argument_fails_the_delivery_and_keeps_every_token(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    tokens = ["tok-a", "tok-b"]
    await herald.put_subscriber(sub, push_tokens=tokens)
    await herald.put_flow(
        "ping", event_type="a.ping", steps=[{"channel": "push", "title": "t", "body": "b"}]
    )
    # What FCM answers for a message whose data is over 4 KB: every token refuses it alike.
    body = fcm_error_body("INVALID_ARGUMENT", "Message payload exceeds the 4096 bytes limit")
    fresh_provider.fail("fcm", 400, body=body, times=None)
    event = await herald.wait_event((await herald.publish(type="a.ping", to=[sub]))["id"])
    (d,) = event["notifications"][0]["deliveries"]
    assert (d["status"], d["attempts"]) == ("failed", 1)  # non-retryable
    assert "INVALID_ARGUMENT" in d["reason"] and "malformed" in d["reason"]
    assert len(fresh_provider.requests("fcm")) == len(tokens)
    assert (await herald.http.get(f"/v1/subscribers/{sub}")).json()["push_tokens"] == tokens
