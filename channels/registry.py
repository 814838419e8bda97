"""Choose one adapter per channel from the settings.

A channel whose provider has no credentials falls back to the sandbox, so a fresh dev
setup works end to end without accounts. Webhooks need no credentials and are always real.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from channels.base import ChannelAdapter, Message
from channels.sandbox import SandboxAdapter
from core.settings import Settings
from core.types import Channel

log = logging.getLogger(__name__)


def email_configured(settings: Settings) -> bool:
    return settings.sendgrid_api_key is not None and bool(
        settings.sendgrid_api_key.get_secret_value()
    )


def sms_configured(settings: Settings) -> bool:
    return bool(
        settings.twilio_account_sid
        and settings.twilio_auth_token is not None
        and settings.twilio_auth_token.get_secret_value()
        and settings.twilio_from_number
    )


def push_configured(settings: Settings) -> bool:
    return settings.fcm_credentials_file is not None


def build_adapters(
    settings: Settings, sandbox_sink: Callable[[Message], None]
) -> dict[Channel, ChannelAdapter]:
    """One adapter per channel; SDK imports happen only for configured providers."""
    adapters: dict[Channel, ChannelAdapter] = {}

    if email_configured(settings):
        from channels.sendgrid import SendGridAdapter

        adapters[Channel.EMAIL] = SendGridAdapter(settings)
    else:
        adapters[Channel.EMAIL] = SandboxAdapter(Channel.EMAIL, sandbox_sink)

    if sms_configured(settings):
        from channels.twilio import TwilioAdapter

        adapters[Channel.SMS] = TwilioAdapter(settings)
    else:
        adapters[Channel.SMS] = SandboxAdapter(Channel.SMS, sandbox_sink)

    if push_configured(settings):
        from channels.fcm import FcmAdapter

        adapters[Channel.PUSH] = FcmAdapter(settings)
    else:
        adapters[Channel.PUSH] = SandboxAdapter(Channel.PUSH, sandbox_sink)

    from channels.webhook import WebhookAdapter

    adapters[Channel.WEBHOOK] = WebhookAdapter(settings)

    log.info("channel providers: %s", describe(adapters))
    return adapters


def describe(adapters: dict[Channel, ChannelAdapter]) -> dict[str, str]:
    """``{"email": "sendgrid", "sms": "sandbox", ...}`` for logs and the health endpoint."""
    return {channel.value: adapter.provider for channel, adapter in adapters.items()}
