"""A stand-in adapter for channels without a configured provider (dev, demos, tests).

Nothing leaves the machine: the message goes to ``sink`` (the caller persists it so it
can be inspected) and the send counts as a success.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from channels.base import Message, SendResult
from core.types import Channel

log = logging.getLogger(__name__)

PROVIDER = "sandbox"


class SandboxAdapter:
    provider = PROVIDER

    def __init__(self, channel: Channel, sink: Callable[[Message], None]) -> None:
        self.channel = channel
        self._sink = sink

    def send(self, message: Message) -> SendResult:
        self._sink(message)
        provider_id = "sbx_" + uuid.uuid4().hex
        log.info(
            "sandbox %s delivery %s captured as %s", self.channel, message.delivery_id, provider_id
        )
        return SendResult(provider=PROVIDER, provider_message_id=provider_id)
