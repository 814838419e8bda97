"""Outgoing webhooks, signed per the Standard Webhooks spec (https://www.standardwebhooks.com)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time

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
from core.settings import Settings
from core.types import Channel

log = logging.getLogger(__name__)

PROVIDER = "webhook"
USER_AGENT = "Herald-Webhooks/1"
SECRET_PREFIX = "whsec_"
_MAX_ERROR_BODY = 512  # bytes of a failed response kept for the error message


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def encode_body(payload: object) -> bytes:
    """Compact JSON; these exact bytes are both signed and sent."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=False).encode()


class WebhookAdapter:
    channel = Channel.WEBHOOK
    provider = PROVIDER

    def __init__(self, settings: Settings) -> None:
        self._secret = settings.webhook_secret.get_secret_value()
        self._client = httpx.Client(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,  # a redirect could bounce a signed payload anywhere
            headers={"user-agent": USER_AGENT},
        )

    def close(self) -> None:
        self._client.close()

    def send(self, message: Message) -> SendResult:
        content = unpack(message, WebhookContent, provider=PROVIDER)
        url = message.to[0]
        body = encode_body(content.payload)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            # The delivery id is stable across retries, so receivers can deduplicate.
            "webhook-id": message.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, message.delivery_id, timestamp, body),
        }
        try:
            with self._client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
                retry_after = response.headers.get("retry-after")
                snippet = b"" if response.is_success else _read_some(response)
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

        detail = f"{url} answered HTTP {status}"
        text = snippet.decode("utf-8", "replace").strip()
        if text:
            detail += f": {text}"
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


def _read_some(response: httpx.Response) -> bytes:
    """At most ``_MAX_ERROR_BODY`` bytes of the body, so a huge error page is not buffered."""
    chunks = bytearray()
    try:
        for chunk in response.iter_bytes():
            chunks += chunk
            if len(chunks) >= _MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass  # the status is what matters; the body is only decoration
    return bytes(chunks[:_MAX_ERROR_BODY])
