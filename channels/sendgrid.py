"""Email through SendGrid's v3 Mail Send API, using the official ``sendgrid`` SDK."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from http.client import HTTPException
from typing import Any
from urllib.error import URLError

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Content,
    CustomArg,
    From,
    Header,
    Mail,
    MimeType,
    Subject,
    To,
)

from channels.base import (
    EmailContent,
    Message,
    Outcome,
    PermanentProviderError,
    SendResult,
    TransientProviderError,
    parse_retry_after,
    unpack,
)
from channels.batch import settle
from channels.sendgrid_transport import keep_alive_client
from core.settings import Settings
from core.types import Channel

log = logging.getLogger(__name__)

PROVIDER = "sendgrid"
DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_PERSONALIZATIONS = 1000  # per v3 Mail Send request
# SendGrid caps a personalization's substitutions at 10,000 bytes.
MAX_SUBSTITUTION_BYTES = 10_000
# A delivery's own URLs (open pixel, click links, unsubscribe): the only per-recipient part
# of a broadcast's rendered body once the template is the same for everyone.
_TRACKED_URL = re.compile(r"""https?://[^\s"'<>]+/(?:t/o|t/c|u)/[^\s"'<>]+""")
_TAG = re.compile(r"-herald\d+-")


class SendGridAdapter:
    channel = Channel.EMAIL
    provider = PROVIDER
    max_batch = MAX_PERSONALIZATIONS

    def __init__(self, settings: Settings, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        if settings.sendgrid_api_key is None:
            raise ValueError("SendGridAdapter needs HERALD_SENDGRID_API_KEY")
        self._client = SendGridAPIClient(
            api_key=settings.sendgrid_api_key.get_secret_value(),
            host=settings.sendgrid_base_url.rstrip("/"),
        )
        # The SDK's client, with connections kept open between sends, and a timeout
        # (SendGridAPIClient takes none; urllib's default is to wait forever).
        self._client.client = keep_alive_client(
            self._client.host,
            self._client.client.request_headers,
            timeout,
            connections=settings.worker_max_concurrent_activities,
        )
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
        provider_id = self._post(self.build_mail(message)) or message.delivery_id
        log.info("sendgrid accepted delivery %s (id %s)", message.delivery_id, provider_id)
        return SendResult(provider=PROVIDER, provider_message_id=provider_id)

    def build_batch(
        self, messages: Sequence[Message]
    ) -> tuple[list[BatchRequest], dict[int, PermanentProviderError]]:
        """The v3 requests for ``messages``, and the messages that cannot be sent at all.

        Messages whose content is the same once their tracking URLs are swapped for
        substitution tags share a request (one personalization each, <= 1,000 a request).
        """
        rejected: dict[int, PermanentProviderError] = {}
        groups: dict[tuple[str, str | None], list[tuple[int, Message, SharedContent]]] = {}
        for index, message in enumerate(messages):
            try:
                content = unpack(message, EmailContent, provider=PROVIDER)
            except PermanentProviderError as exc:
                rejected[index] = exc
                continue
            shared = shared_content(content)
            key = (shared.text, shared.html)
            groups.setdefault(key, []).append((index, message, shared))
        requests: list[BatchRequest] = []
        for (text, html), members in groups.items():
            for start in range(0, len(members), MAX_PERSONALIZATIONS):
                part = members[start : start + MAX_PERSONALIZATIONS]
                mail = Mail(from_email=self._from)
                mail.add_content(Content(MimeType.text, text))
                if html:
                    mail.add_content(Content(MimeType.html, html))
                body: dict[str, Any] = mail.get()
                body["personalizations"] = [_personalization(m, s) for _, m, s in part]
                requests.append(BatchRequest(tuple(i for i, _, _ in part), body))
        return requests, rejected

    def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """One request per content group; its X-Message-Id names every message in it."""
        requests, rejected = self.build_batch(messages)
        outcomes: dict[int, Outcome] = dict(rejected)
        for number, request in enumerate(requests):
            try:
                provider_id = self._post(request.body)
            except PermanentProviderError as exc:
                log.warning("sendgrid refused %d message(s): %s", len(request.indexes), exc)
                outcomes.update((i, exc) for i in request.indexes)
                continue
            except TransientProviderError as exc:
                # Stop: the requests already accepted keep their results, the rest retry.
                for later in requests[number:]:
                    outcomes.update((i, exc) for i in later.indexes)
                break
            log.info("sendgrid accepted %d message(s) (id %s)", len(request.indexes), provider_id)
            for i in request.indexes:
                outcomes[i] = SendResult(
                    provider=PROVIDER,
                    provider_message_id=provider_id or messages[i].delivery_id,
                )
        return settle([outcomes[i] for i in range(len(messages))])

    def _post(self, body: dict[str, Any]) -> str | None:
        """POST one v3 request; the X-Message-Id it was given, or a ProviderError."""
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
        provider_id: str | None = headers.get("X-Message-Id") if headers is not None else None
        return provider_id or None


@dataclass(frozen=True)
class BatchRequest:
    """One v3 Mail Send body, and which of the batch's messages it carries (in order)."""

    indexes: tuple[int, ...]
    body: dict[str, Any]


@dataclass(frozen=True)
class SharedContent:
    text: str
    html: str | None
    substitutions: dict[str, str]  # tag -> this message's own URL
    content: EmailContent


def shared_content(content: EmailContent) -> SharedContent:
    """The message's text/html with its own tracking URLs replaced by ``-herald{i}-`` tags.

    Left as is when a tag could be mistaken for text already in the message (SendGrid also
    substitutes in the subject), or when the values exceed SendGrid's substitution budget.
    """
    own = (content.text, content.html or "", content.subject, *content.headers.values())
    if any(_TAG.search(value) for value in own):
        return SharedContent(content.text, content.html, {}, content)
    tags: dict[str, str] = {}  # url -> tag, in order of first appearance

    def tag(match: re.Match[str]) -> str:
        url = match.group(0)
        return tags.setdefault(url, f"-herald{len(tags)}-")

    text = _TRACKED_URL.sub(tag, content.text)
    html = _TRACKED_URL.sub(tag, content.html) if content.html is not None else None
    substitutions = {t: url for url, t in tags.items()}
    if sum(len(t) + len(url) for t, url in substitutions.items()) > MAX_SUBSTITUTION_BYTES:
        return SharedContent(content.text, content.html, {}, content)
    return SharedContent(text, html, substitutions, content)


def _personalization(message: Message, shared: SharedContent) -> dict[str, Any]:
    """One recipient's part of a v3 body, as ``Personalization.get()`` shapes it.

    Built as a dict: the helper objects cost more than the rest of a 1,000-recipient
    request. The request itself still goes through the SDK's client.
    """
    p: dict[str, Any] = {"to": [{"email": message.to[0]}], "subject": shared.content.subject}
    if shared.content.headers:
        p["headers"] = dict(shared.content.headers)
    if shared.substitutions:
        p["substitutions"] = dict(shared.substitutions)
    # Echoed back on SendGrid event webhooks, so events can be tied to the delivery.
    p["custom_args"] = {
        "herald_delivery_id": message.delivery_id,
        "herald_tenant_id": message.tenant_id,
    }
    return p


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
