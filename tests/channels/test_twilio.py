"""TwilioAdapter against the fake Twilio API, through the real ``twilio`` SDK."""

from __future__ import annotations

import base64
import threading

import pytest

from channels.base import PermanentProviderError, SmsContent, TransientProviderError
from channels.twilio import TwilioAdapter
from core.types import Channel
from tests.fakes.provider import dead_url, twilio_error_body


@pytest.fixture
def sms(make_message):
    def make(to: str = "+15551234567", text: str = "Your code is 123456"):
        return make_message(Channel.SMS, (to,), SmsContent(text=text))

    return make


def test_send_posts_twilio_form(provider, settings, sms):
    message = sms()

    result = TwilioAdapter(settings).send(message)

    [req] = provider.requests("twilio")
    assert req.status == 201
    assert req.path == f"/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages.json"
    assert req.form == {
        "To": "+15551234567",
        "From": "+15550000000",
        "Body": "Your code is 123456",
        # Delivery receipts come back here, naming the delivery even before the send is recorded.
        "StatusCallback": f"{settings.base_url}/v1/providers/twilio/status"
        f"?delivery={message.delivery_id}",
    }
    user, _, password = (
        base64.b64decode(req.headers["authorization"].split()[1]).decode().partition(":")
    )
    assert (user, password) == (settings.twilio_account_sid, "twilio-test-token")
    assert result.provider == "twilio"
    assert result.provider_message_id.startswith("SM")


def test_twilio_edge_and_region_env_are_ignored(provider, settings, sms, monkeypatch):
    monkeypatch.setenv("TWILIO_EDGE", "sydney")
    monkeypatch.setenv("TWILIO_REGION", "au1")

    TwilioAdapter(settings).send(sms())

    assert len(provider.requests("twilio")) == 1


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (21211, "The 'To' number +1555 is not a valid phone number."),
        (21614, "'To' number is not a valid mobile number"),
        (21610, "Attempt to send to unsubscribed recipient"),
    ],
)
def test_recipient_errors_are_permanent_with_twilio_code(provider, settings, sms, code, text):
    provider.fail("twilio", 400, body=twilio_error_body(code, text, 400))

    with pytest.raises(PermanentProviderError) as info:
        TwilioAdapter(settings).send(sms())

    assert info.value.code == str(code)
    assert text in info.value.message


def test_429_is_transient_with_retry_after(provider, settings, sms):
    provider.fail(
        "twilio",
        429,
        body=twilio_error_body(20429, "Too Many Requests", 429),
        headers={"Retry-After": "3"},
    )

    with pytest.raises(TransientProviderError) as info:
        TwilioAdapter(settings).send(sms())

    assert info.value.retry_after == 3
    assert info.value.code == "20429"


def test_retry_after_does_not_leak_into_the_next_error(provider, settings, sms):
    adapter = TwilioAdapter(settings)
    provider.fail("twilio", 429, headers={"Retry-After": "3"})
    provider.fail("twilio", 503)

    with pytest.raises(TransientProviderError) as first:
        adapter.send(sms())
    with pytest.raises(TransientProviderError) as second:
        adapter.send(sms())

    assert first.value.retry_after == 3
    assert second.value.retry_after is None


def test_retry_after_is_tracked_per_thread(provider, settings, sms):
    adapter = TwilioAdapter(settings)
    provider.fail("twilio", 429, headers={"Retry-After": "7"}, when="slow")
    provider.fail("twilio", 500, when="fast")
    errors: dict[str, TransientProviderError] = {}

    def send(text: str) -> None:
        try:
            adapter.send(sms(text=text))
        except TransientProviderError as exc:
            errors[text] = exc

    threads = [threading.Thread(target=send, args=(t,)) for t in ("slow", "fast")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors["slow"].retry_after == 7
    assert errors["fast"].retry_after is None


def test_500_is_transient(provider, settings, sms):
    provider.fail("twilio", 500)

    with pytest.raises(TransientProviderError):
        TwilioAdapter(settings).send(sms())


def test_bad_credentials_are_permanent_auth(provider, settings, sms):
    provider.fail("twilio", 401, body=twilio_error_body(20003, "Authenticate", 401))

    with pytest.raises(PermanentProviderError) as info:
        TwilioAdapter(settings).send(sms())

    assert info.value.code == "auth"


def test_other_4xx_is_permanent(provider, settings, sms):
    provider.fail("twilio", 400, body=twilio_error_body(21602, "Message body is required.", 400))

    with pytest.raises(PermanentProviderError) as info:
        TwilioAdapter(settings).send(sms())

    assert info.value.code == "21602"


def test_unreachable_host_is_transient(make_settings, sms):
    adapter = TwilioAdapter(make_settings(twilio_base_url=dead_url()))

    with pytest.raises(TransientProviderError) as info:
        adapter.send(sms())

    assert info.value.code == "network"
