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
        assert isinstance(adapters[channel], SandboxAdapter)
        assert adapters[channel].channel == channel
    assert isinstance(adapters[Channel.WEBHOOK], WebhookAdapter)
    assert describe(adapters) == {
        "email": "sandbox",
        "sms": "sandbox",
        "push": "sandbox",
        "webhook": "webhook",
    }


def test_partial_twilio_config_is_sandboxed(make_settings):
    adapters = build_adapters(make_settings(twilio_from_number=None), lambda message: None)

    assert isinstance(adapters[Channel.SMS], SandboxAdapter)
    assert isinstance(adapters[Channel.EMAIL], SendGridAdapter)


def test_configured_providers_are_real(make_settings):
    adapters = build_adapters(make_settings(), lambda message: None)
    try:
        assert isinstance(adapters[Channel.EMAIL], SendGridAdapter)
        assert isinstance(adapters[Channel.SMS], TwilioAdapter)
        assert isinstance(adapters[Channel.PUSH], FcmAdapter)
        assert describe(adapters) == {
            "email": "sendgrid",
            "sms": "twilio",
            "push": "fcm",
            "webhook": "webhook",
        }
    finally:
        push = adapters[Channel.PUSH]
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
