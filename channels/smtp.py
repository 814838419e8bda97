"""Email through any SMTP relay, using ``aiosmtplib``: the failover behind SendGrid.

``send`` is synchronous because the delivery activity runs in a worker thread; each call
runs its own short event loop for one SMTP session.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, formatdate, parseaddr
from urllib.parse import parse_qsl, unquote, urlsplit

import aiosmtplib

from channels.base import (
    EmailContent,
    Message,
    PermanentProviderError,
    ProviderError,
    SendResult,
    TransientProviderError,
    unpack,
)
from core.settings import Settings
from core.types import Channel

log = logging.getLogger(__name__)

PROVIDER = "smtp"
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


@dataclass(frozen=True)
class SmtpServer:
    """Where and how to connect, parsed from ``HERALD_SMTP_URL``."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    use_tls: bool = False
    start_tls: bool = False


def parse_smtp_url(url: str) -> SmtpServer:
    """Parse ``smtp[s]://[user[:password]@]host[:port][?starttls=true]``.

    Error messages never echo the URL, since it usually carries the password.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(
            f"HERALD_SMTP_URL must start with smtp:// or smtps://, not {scheme or 'nothing'!r}"
        )
    if not parts.hostname:
        raise ValueError("HERALD_SMTP_URL has no host")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError("HERALD_SMTP_URL must not have a path or fragment")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError("HERALD_SMTP_URL has an invalid port") from None

    start_tls = False
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() != "starttls":
            raise ValueError(f"HERALD_SMTP_URL has an unknown option {key!r}")
        if value.lower() not in _TRUE | _FALSE:
            raise ValueError("HERALD_SMTP_URL starttls must be true or false")
        start_tls = value.lower() in _TRUE
    if start_tls and scheme == "smtps":
        raise ValueError("HERALD_SMTP_URL: smtps:// is already TLS; starttls applies to smtp://")

    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and username is None:
        raise ValueError("HERALD_SMTP_URL has a password but no user")
    return SmtpServer(
        host=parts.hostname,
        port=port,
        username=username,
        password=password,
        use_tls=scheme == "smtps",
        start_tls=start_tls,
    )


class SmtpAdapter:
    channel = Channel.EMAIL
    provider = PROVIDER

    def __init__(self, settings: Settings, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        url = settings.smtp_url.get_secret_value() if settings.smtp_url is not None else ""
        if not url.strip():
            raise ValueError("SmtpAdapter needs HERALD_SMTP_URL")
        self._server = parse_smtp_url(url)
        self._timeout = timeout
        name, addr = parseaddr(settings.email_from)
        if "@" not in addr:
            raise ValueError(f"HERALD_EMAIL_FROM is not an email address: {settings.email_from!r}")
        self._from_addr = addr
        self._from_header = formataddr((name, addr))

    @staticmethod
    def message_id(message: Message) -> str:
        """Stable across retries and failover, so receivers can drop duplicates."""
        return f"<{message.delivery_id}@herald>"

    def build_email(self, message: Message) -> EmailMessage:
        """The MIME message (exposed so tests can inspect it)."""
        content = unpack(message, EmailContent, provider=PROVIDER)
        email = EmailMessage()
        email["From"] = self._from_header
        email["To"] = _recipient(message)
        # Header values may not contain line breaks; a template can produce them.
        email["Subject"] = " ".join(content.subject.splitlines())
        email["Date"] = formatdate(usegmt=True)
        email["Message-ID"] = self.message_id(message)
        email["X-Herald-Delivery-Id"] = message.delivery_id
        email["X-Herald-Tenant-Id"] = message.tenant_id
        for name, value in content.headers.items():
            # List-Unsubscribe and List-Unsubscribe-Post (RFC 8058), among others.
            email[name] = " ".join(value.splitlines())
        email.set_content(content.text)
        if content.html:
            email.add_alternative(content.html, subtype="html")
        return email

    def send(self, message: Message) -> SendResult:
        email = self.build_email(message)
        server = self._server
        try:
            reply = asyncio.run(self._send(email, _recipient(message)))
        except (aiosmtplib.SMTPException, OSError) as exc:
            error = _classify(exc)
            log.warning(
                "smtp %s:%s failed delivery %s: %s",
                server.host,
                server.port,
                message.delivery_id,
                error,
            )
            raise error from exc
        message_id = self.message_id(message)
        log.info(
            "smtp %s:%s accepted delivery %s (%s; %s)",
            server.host,
            server.port,
            message.delivery_id,
            message_id,
            reply,
        )
        return SendResult(provider=PROVIDER, provider_message_id=message_id)

    async def _send(self, email: EmailMessage, recipient: str) -> str:
        server = self._server
        _, reply = await aiosmtplib.send(
            email,
            sender=self._from_addr,
            recipients=[recipient],
            hostname=server.host,
            port=server.port,
            username=server.username,
            password=server.password,
            use_tls=server.use_tls,
            # False, not aiosmtplib's default None, which upgrades whenever offered.
            start_tls=server.start_tls,
            timeout=self._timeout,
        )
        return reply


def _recipient(message: Message) -> str:
    """The bare address, or a recipient-level error: no provider can send to garbage."""
    raw = message.to[0] if message.to else ""
    _, addr = parseaddr(raw)
    if "@" not in addr or "\r" in raw or "\n" in raw:
        raise PermanentProviderError(
            f"not an email address: {raw!r}",
            provider=PROVIDER,
            code="bad_recipient",
            recipient=True,
        )
    return addr


def _classify(exc: aiosmtplib.SMTPException | OSError) -> ProviderError:
    """Map an aiosmtplib failure onto retry (transient) or failover/fail (permanent)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        # We send to one address, so "all refused" means that one.
        return _classify(exc.recipients[0])
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        code, reply = exc.code, f"{exc.code} {exc.message}"
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            # 454 is "temporary authentication failure" (RFC 4954): worth a retry.
            kind = TransientProviderError if code < 500 else PermanentProviderError
            return kind(f"authentication failed: {reply}", provider=PROVIDER, code="auth")
        if code < 500:
            return TransientProviderError(_describe(exc, reply), provider=PROVIDER, code=str(code))
        return PermanentProviderError(
            _describe(exc, reply),
            provider=PROVIDER,
            code=str(code),
            recipient=isinstance(exc, aiosmtplib.SMTPRecipientRefused),
        )
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError and asyncio.TimeoutError included
        return TransientProviderError(f"timed out: {exc}", provider=PROVIDER, code="timeout")
    if isinstance(exc, ssl.SSLCertVerificationError) or isinstance(
        exc.__cause__, ssl.SSLCertVerificationError
    ):
        # A bad certificate stays bad on retry; let the next provider have a go.
        return PermanentProviderError(f"TLS failed: {exc}", provider=PROVIDER, code="tls")
    if isinstance(exc, OSError):
        # SMTPConnectError and SMTPServerDisconnected are ConnectionErrors, hence OSErrors.
        return TransientProviderError(f"network error: {exc}", provider=PROVIDER, code="network")
    # The rest (no AUTH or STARTTLS offered, no SMTPUTF8 for a non-ASCII address) is a
    # mismatch between our configuration and the server: retrying will not fix it.
    return PermanentProviderError(f"{type(exc).__name__}: {exc}", provider=PROVIDER, code="smtp")


def _describe(exc: aiosmtplib.SMTPResponseException, reply: str) -> str:
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return f"recipient {exc.recipient} refused: {reply}"
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return f"sender {exc.sender} refused: {reply}"
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return f"message refused: {reply}"
    return reply
