"""The one small interface every provider adapter implements.

Adapters know nothing of Temporal: they raise ``TransientProviderError`` or
``PermanentProviderError`` and the activity layer maps those onto retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable

from core.types import Channel


@dataclass(frozen=True)
class EmailContent:
    subject: str
    text: str
    html: str | None = None
    # Extra headers, e.g. List-Unsubscribe and List-Unsubscribe-Post (RFC 8058).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SmsContent:
    text: str


@dataclass(frozen=True)
class PushContent:
    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookContent:
    payload: dict[str, Any]


Content = EmailContent | SmsContent | PushContent | WebhookContent


@dataclass(frozen=True)
class Message:
    """A rendered message for one delivery.

    ``to`` holds the addresses: one email address, one E.164 number, the push
    tokens, or one webhook URL. ``delivery_id`` is stable across retries so
    providers and receivers can deduplicate.
    """

    delivery_id: str
    tenant_id: str
    channel: Channel
    to: tuple[str, ...]
    content: Content


@dataclass(frozen=True)
class SendResult:
    provider: str
    provider_message_id: str
    # Push tokens the provider reported as dead; the caller removes them from the subscriber.
    invalid_tokens: tuple[str, ...] = ()
    # The answer already proves delivery (a webhook receiver's 2xx).
    delivered: bool = False


class ProviderError(Exception):
    def __init__(
        self,
        message: str,
        *,
        provider: str,
        code: str | None = None,
        retry_after: float | None = None,
        invalid_tokens: tuple[str, ...] = (),
        recipient: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.code = code
        self.retry_after = retry_after
        self.invalid_tokens = invalid_tokens
        # True when the fault is the recipient's (bad number, dead token), so another
        # provider of the channel cannot do better and failover is pointless.
        self.recipient = recipient

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code else ""
        return f"{self.provider}{code}: {self.message}"


class TransientProviderError(ProviderError):
    """Worth retrying: network errors, timeouts, 5xx, 429."""


class PermanentProviderError(ProviderError):
    """Retrying cannot help: bad address, rejected credentials, 4xx.

    With ``recipient=False`` (the provider refused: credentials, account, request) the
    channel's next provider is tried; with ``recipient=True`` the delivery fails.
    """


# Per message of a batch: success, or why this one failed. A TransientProviderError here
# means "not sent, worth retrying"; the batch as a whole went on without it.
Outcome: TypeAlias = SendResult | ProviderError


C = TypeVar("C", EmailContent, SmsContent, PushContent, WebhookContent)


def unpack(message: Message, kind: type[C], *, provider: str, one_recipient: bool = True) -> C:
    """The content an adapter expects, or a permanent error: a wrong shape never improves."""
    content = message.content
    if not isinstance(content, kind):
        raise PermanentProviderError(
            f"expected {kind.__name__}, got {type(content).__name__}",
            provider=provider,
            code="bad_content",
        )
    if one_recipient and len(message.to) != 1:
        raise PermanentProviderError(
            f"expected exactly one recipient, got {len(message.to)}",
            provider=provider,
            code="bad_recipient",
            recipient=True,
        )
    return content


class ChannelAdapter(Protocol):
    channel: Channel
    provider: str

    def send(self, message: Message) -> SendResult:
        """Send once; raise a ``ProviderError`` subclass on failure, never return a failure."""
        ...


@runtime_checkable
class BatchAdapter(Protocol):
    """An adapter that can hand the provider many messages per call (its batch API)."""

    channel: Channel
    provider: str
    max_batch: int

    def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """One outcome per message, in order. Raise TransientProviderError only when the
        whole batch failed in a way worth retrying (network, 5xx, 429 with Retry-After)."""
        ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
