"""Outgoing webhooks, signed per the Standard Webhooks spec (https://www.standardwebhooks.com).

Guarded against SSRF (core.netguard): the host is resolved once, every address checked, and
the connection made to a checked address, so DNS rebinding cannot swap it between the check
and the connect; the Host header, TLS SNI and certificate checks still use the hostname.
Redirects are not followed, and nothing of a response is kept but its status.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import ssl
import time
import typing
from collections.abc import Sequence
from http import HTTPStatus

import httpcore
import httpx

from channels.base import (
    Message,
    PermanentProviderError,
    SendResult,
    TransientProviderError,
    WebhookContent,
    parse_retry_after,
    unpack,
)
from core.netguard import AddressPolicy, BlockedAddressError
from core.settings import Settings
from core.types import Channel

log = logging.getLogger(__name__)

PROVIDER = "webhook"
USER_AGENT = "Herald-Webhooks/1"
SECRET_PREFIX = "whsec_"


@dataclasses.dataclass(frozen=True)
class SignedWebhook(WebhookContent):
    """A webhook with its tenant's signing secrets, newest first, as the activity read them.

    The channel does not read the store: the activity layer resolves the secrets and hands
    them over with the message (``with_secrets``).
    """

    secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)


def with_secrets(message: Message, secrets: Sequence[str]) -> Message:
    content = message.content
    if not isinstance(content, WebhookContent):
        raise TypeError(f"expected WebhookContent, got {type(content).__name__}")
    signed = SignedWebhook(payload=content.payload, secrets=tuple(secrets))
    return dataclasses.replace(message, content=signed)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets)


def encode_body(payload: object) -> bytes:
    """Compact JSON; these exact bytes are both signed and sent."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=False).encode()


class GuardedBackend(httpcore.SyncBackend):
    """Connects only to addresses ``policy`` allows, and to the very address it checked."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.policy.resolve(host, port)  # BlockedAddressError passes through
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        failure: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            try:
                return super().connect_tcp(
                    address, port, timeout, local_address, list(socket_options or ())
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # the next address may answer, as create_connection does
        raise failure


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool whose every connection is guarded.

    httpx offers no public way to choose httpcore's network backend, so the pool it built
    is replaced by one made through httpcore's public API.
    """

    def __init__(self, policy: AddressPolicy, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(verify=verify, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            network_backend=GuardedBackend(policy),
        )


def guarded_client(
    policy: AddressPolicy, timeout: float, verify: ssl.SSLContext | bool = True
) -> httpx.Client:
    """A client that follows no redirect and ignores proxy variables: a proxy would make
    the connection on our behalf, to an address we never checked."""
    return httpx.Client(
        transport=_GuardedTransport(policy, verify),
        timeout=timeout,
        follow_redirects=False,  # a redirect could bounce a signed payload anywhere
        trust_env=False,
        headers={"user-agent": USER_AGENT},
    )


def status_line(status: int) -> str:
    """``HTTP 503 Service Unavailable``: the standard phrase, never the receiver's words."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


class WebhookAdapter:
    channel = Channel.WEBHOOK
    provider = PROVIDER

    def __init__(self, settings: Settings, *, verify: ssl.SSLContext | bool = True) -> None:
        self.policy = settings.webhook_policy
        self._client = guarded_client(self.policy, settings.webhook_timeout_seconds, verify)

    def close(self) -> None:
        self._client.close()

    def send(self, message: Message) -> SendResult:
        content = unpack(message, WebhookContent, provider=PROVIDER)
        secrets = content.secrets if isinstance(content, SignedWebhook) else ()
        if not secrets:
            raise PermanentProviderError(
                "no signing secret was given for this webhook", provider=PROVIDER, code="unsigned"
            )
        url = message.to[0]
        body = encode_body(content.payload)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            # The delivery id is stable across retries, so receivers can deduplicate.
            "webhook-id": message.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(secrets, message.delivery_id, timestamp, body),
        }
        try:
            # Streamed and never read: only the status and Retry-After are kept.
            with self._client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
                retry_after = response.headers.get("retry-after")
        except BlockedAddressError as exc:
            raise PermanentProviderError(
                f"refused {url}: {exc}", provider=PROVIDER, code="blocked_address", recipient=True
            ) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise PermanentProviderError(
                f"bad webhook URL {url!r}: {exc}", provider=PROVIDER, code="bad_url", recipient=True
            ) from exc
        except httpx.TimeoutException as exc:
            raise TransientProviderError(
                f"timeout posting to {url}: {exc!r}", provider=PROVIDER, code="timeout"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientProviderError(
                f"network error posting to {url}: {exc!r}", provider=PROVIDER, code="network"
            ) from exc

        if 200 <= status < 300:
            log.info("webhook delivery %s accepted by %s (%s)", message.delivery_id, url, status)
            return SendResult(
                provider=PROVIDER, provider_message_id=message.delivery_id, delivered=True
            )

        detail = f"{url} answered {status_line(status)}"
        if status == 429 or status >= 500:
            raise TransientProviderError(
                detail,
                provider=PROVIDER,
                code=str(status),
                retry_after=parse_retry_after(retry_after),
            )
        if 300 <= status < 400:
            detail += " (redirects are not followed)"
        # 410 Gone: the receiver asks us to stop; the caller disables the endpoint.
        # The URL is the recipient: no other provider could reach it.
        raise PermanentProviderError(detail, provider=PROVIDER, code=str(status), recipient=True)
