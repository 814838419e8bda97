"""Email through SendGrid's v3 Mail Send API, using the official ``sendgrid`` SDK."""

from __future__ import annotations

import json
import logging
from email.utils import parseaddr
from http.client import HTTPException
from typing import Any
from urllib.error import URLError

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Content, CustomArg, From, Header, Mail, MimeType, Subject, To

from channels.base import (
    EmailContent,
    Message,
    PermanentProviderError,
    SendResult,
    TransientProviderError,
    parse_retry_after,
    unpack,
)
from core.settings import Settings
from core.types import Channel

log = logging.getLogger(__name__)

PROVIDER = "sendgrid"
DEFAULT_TIMEOUT_SECONDS = 10.0


class SendGridAdapter:
    channel = Channel.EMAIL
    provider = PROVIDER

    def __init__(self, settings: Settings, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        if settings.sendgrid_api_key is None:
            raise ValueError("SendGridAdapter needs HERALD_SENDGRID_API_KEY")
        self._client = SendGridAPIClient(
            api_key=settings.sendgrid_api_key.get_secret_value(),
            host=settings.sendgrid_base_url.rstrip("/"),
        )
        # SendGridAPIClient takes no timeout; its python_http_client.Client does, and passes
        # it on to every per-path client it builds (urllib's default is to wait forever).
        self._client.client.timeout = timeout
        name, addr = parseaddr(settings.email_from)
        if not addr:
            raise ValueError(f"HERALD_EMAIL_FROM is not an email address: {settings.email_from!r}")
        self._from = From(addr, name or None)

    def build_mail(self, message: Message) -> dict[str, Any]:
        """The v3 request body (exposed so tests can inspect it)."""
        content = unpack(message, EmailContent, provider=PROVIDER)
        mail = Mail(from_email=self._from, to_emails=To(message.to[0]))
        mail.subject = Subject(content.subject)
        mail.add_content(Content(MimeType.text, content.text))
        if content.html:
            mail.add_content(Content(MimeType.html, content.html))
        if content.headers:
            # List-Unsubscribe and List-Unsubscribe-Post (RFC 8058), among others.
            mail.header = [Header(k, v) for k, v in content.headers.items()]
        # Echoed back on SendGrid event webhooks, so events can be tied to the delivery.
        mail.custom_arg = [
            CustomArg("herald_delivery_id", message.delivery_id),
            CustomArg("herald_tenant_id", message.tenant_id),
        ]
        body: dict[str, Any] = mail.get()
        return body

    def send(self, message: Message) -> SendResult:
        body = self.build_mail(message)
        try:
            response = self._client.send(body)
        except HTTPError as exc:
            raise _classify_http_error(exc) from exc
        except (URLError, HTTPException, OSError) as exc:
            # URLError wraps connection failures (reason: the OSError); a read timeout
            # surfaces as a bare TimeoutError (== socket.timeout).
            reason = exc.reason if isinstance(exc, URLError) else exc
            kind = "timeout" if isinstance(reason, TimeoutError) else "network"
            raise TransientProviderError(
                f"{kind} error talking to SendGrid: {exc}", provider=PROVIDER, code=kind
            ) from exc
        headers = response.headers
        provider_id = (headers.get("X-Message-Id") if headers is not None else None) or (
            message.delivery_id
        )
        log.info(
            "sendgrid accepted delivery %s (status %s, id %s)",
            message.delivery_id,
            response.status_code,
            provider_id,
        )
        return SendResult(provider=PROVIDER, provider_message_id=provider_id)


def _error_message(exc: HTTPError) -> str:
    """SendGrid's own explanation from ``{"errors": [{"message": ...}]}``, if any."""
    raw = exc.body
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    try:
        errors = json.loads(text).get("errors") or []
        messages = [e["message"] for e in errors if isinstance(e, dict) and e.get("message")]
    except (ValueError, AttributeError, TypeError):
        messages = []
    if messages:
        return "; ".join(messages)
    return f"HTTP {exc.status_code}: {text[:200] or exc.reason}"


def _classify_http_error(exc: HTTPError) -> TransientProviderError | PermanentProviderError:
    status = int(exc.status_code)
    detail = _error_message(exc)
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
        return TransientProviderError(
            detail, provider=PROVIDER, code=str(status), retry_after=retry_after
        )
    if status in (401, 403):
        return PermanentProviderError(detail, provider=PROVIDER, code="auth")
    return PermanentProviderError(detail, provider=PROVIDER, code=str(status))
