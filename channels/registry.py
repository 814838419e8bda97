"""Build each channel's providers, in failover order, from the settings.

A channel with no configured provider falls back to the sandbox, so a fresh dev
setup works end to end without accounts. Webhooks need no credentials and are always real.
Production refuses the sandbox unless ``HERALD_SANDBOX=true`` (see core.deployment).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from channels.base import ChannelAdapter, Message
from channels.sandbox import SandboxAdapter
from core.deployment import sandbox_allowed, sandboxed_channels
from core.settings import SANDBOX, Settings
from core.types import Channel

log = logging.getLogger(__name__)

Adapters = dict[Channel, dict[str, ChannelAdapter]]


def _build(
    name: str, channel: Channel, settings: Settings, sandbox_sink: Callable[[Message], None]
) -> ChannelAdapter:
    """SDK imports happen only for providers in use."""
    if name == SANDBOX:
        return SandboxAdapter(channel, sandbox_sink)
    if name == "sendgrid":
        from channels.sendgrid import SendGridAdapter

        return SendGridAdapter(settings)
    if name == "smtp":
        from channels.smtp import SmtpAdapter

        return SmtpAdapter(settings)
    if name == "twilio":
        from channels.twilio import TwilioAdapter

        return TwilioAdapter(settings)
    if name == "fcm":
        from channels.fcm import FcmAdapter

        return FcmAdapter(settings)
    if name == "webhook":
        from channels.webhook import WebhookAdapter

        return WebhookAdapter(settings)
    raise ValueError(f"unknown provider {name!r} for {channel.value}")


def build_adapters(settings: Settings, sandbox_sink: Callable[[Message], None]) -> Adapters:
    """Every channel's providers, keyed by name, in the order ``providers_for`` gives.

    Settings validation already refuses the sandbox in production; this guards settings
    built without validation (``model_copy``), so a worker never records "sent" silently.
    """
    if not sandbox_allowed(settings) and (problems := sandboxed_channels(settings)):
        raise ValueError(
            "the sandbox is off in production (HERALD_SANDBOX=true allows it): "
            + "; ".join(problems)
        )
    adapters: Adapters = {
        channel: {
            name: _build(name, channel, settings, sandbox_sink)
            for name in settings.providers_for(channel)
        }
        for channel in Channel
    }
    log.info("channel providers: %s", describe(adapters))
    return adapters


def describe(adapters: Adapters) -> dict[str, str]:
    """``{"email": "sendgrid>smtp", "sms": "sandbox", ...}`` for logs and the health endpoint."""
    return {channel.value: ">".join(providers) for channel, providers in adapters.items()}
