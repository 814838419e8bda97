"""build_adapters: real providers where configured, the sandbox elsewhere."""

from __future__ import annotations

from channels.base import EmailContent, Message
from channels.fcm import FcmAdapter
from channels.registry import build_adapters, describe
from channels.sandbox import SandboxAdapter
from channels.sendgrid import SendGridAdapter
from channels.twilio import TwilioAdapter
from channels.webhook import WebhookAdapter
from core.settings import Settings
from core.types import Channel


def unconfigured_settings() -> Settings:
    return Settings(
        env="test",
        sendgrid_api_key=None,
        twilio_account_sid=None,
        twilio_auth_token=None,
        twilio_from_number=None,
        fcm_credentials_file=None,
    )


def test_unconfigured_providers_fall_back_to_sandbox():
    adapters = build_adapters(unconfigured_settings(), lambda message: None)

    for channel in (Channel.EMAIL, Channel.SMS, Channel.PUSH):
        (sandbox,) = adapters[channel].values()
        assert isinstance(sandbox, SandboxAdapter)
        assert sandbox.channel == channel
    assert isinstance(adapters[Channel.WEBHOOK]["webhook"], WebhookAdapter)
    assert describe(adapters) == {
        "email": "sandbox",
        "sms": "sandbox",
        "push": "sandbox",
        "webhook": "webhook",
    }


def test_partial_twilio_config_is_sandboxed(make_settings):
    adapters = build_adapters(make_settings(twilio_from_number=None), lambda message: None)

    assert isinstance(adapters[Channel.SMS]["sandbox"], SandboxAdapter)
    assert isinstance(adapters[Channel.EMAIL]["sendgrid"], SendGridAdapter)


def test_configured_providers_are_real(make_settings):
    adapters = build_adapters(make_settings(), lambda message: None)
    try:
        assert isinstance(adapters[Channel.EMAIL]["sendgrid"], SendGridAdapter)
        assert isinstance(adapters[Channel.SMS]["twilio"], TwilioAdapter)
        assert isinstance(adapters[Channel.PUSH]["fcm"], FcmAdapter)
        assert describe(adapters) == {
            "email": "sendgrid",
            "sms": "twilio",
            "push": "fcm",
            "webhook": "webhook",
        }
    finally:
        push = adapters[Channel.PUSH]["fcm"]
        assert isinstance(push, FcmAdapter)
        push.close()


def test_sandbox_hands_the_message_to_the_sink(make_message):
    captured: list[Message] = []
    adapter = SandboxAdapter(Channel.EMAIL, captured.append)
    message = make_message(Channel.EMAIL, ("ada@example.com",), EmailContent("Hi", "Hello"))

    result = adapter.send(message)

    assert captured == [message]
    assert result.provider == "sandbox"
    assert result.provider_message_id.startswith("sbx_")
    assert adapter.send(message).provider_message_id != result.provider_message_id


def test_email_lists_sendgrid_then_smtp_when_both_are_configured(make_settings):
    from channels.smtp import SmtpAdapter

    adapters = build_adapters(
        make_settings(smtp_url="smtp://u:p@127.0.0.1:2525"), lambda message: None
    )
    try:
        assert list(adapters[Channel.EMAIL]) == ["sendgrid", "smtp"]
        assert isinstance(adapters[Channel.EMAIL]["smtp"], SmtpAdapter)
        assert describe(adapters)["email"] == "sendgrid>smtp"
    finally:
        push = adapters[Channel.PUSH]["fcm"]
        assert isinstance(push, FcmAdapter)
        push.close()
