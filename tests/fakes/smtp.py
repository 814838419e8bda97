"""A real SMTP server on loopback (aiosmtpd) for testing SMTP clients end to end.

Typical use::

    with FakeSmtp(username="herald", password="s3cret") as smtp:
        settings = Settings(smtp_url=smtp.url("herald", "s3cret"))
        smtp.fail("rcpt", 550, "5.1.1 no such user")
        ...
        [mail] = smtp.messages
"""

from __future__ import annotations

import email
import email.policy
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.fakes.net import free_port

Command = Literal["mail", "rcpt", "data"]


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    login: str | None  # who authenticated, if anyone


class FakeSmtp:
    """Accepts everything unless told to fail; requires AUTH when given credentials."""

    def __init__(self, *, username: str | None = None, password: str | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.messages: list[ReceivedMail] = []
        self._credentials = (username, password or "") if username is not None else None
        self._failures: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._controller = Controller(
            self,
            hostname=self.host,
            port=self.port,
            # Otherwise aiosmtpd looks up the machine's FQDN, which can be slow.
            server_hostname="fake-smtp.test",
            authenticator=self._authenticate,
            # Offer AUTH on plain connections; tests have no certificates.
            auth_require_tls=False,
        )

    def start(self) -> FakeSmtp:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> FakeSmtp:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """A ``HERALD_SMTP_URL`` for this server, credentials percent-encoded."""
        auth = ""
        if user is not None:
            auth = quote(user, safe="")
            if password is not None:
                auth += ":" + quote(password, safe="")
            auth += "@"
        return f"smtp://{auth}{self.host}:{self.port}"

    def fail(self, command: Command, code: int, text: str, *, times: int = 1) -> None:
        """Answer the next ``times`` MAIL/RCPT/DATA commands with ``code text``."""
        with self._lock:
            self._failures.setdefault(command, []).extend([f"{code} {text}"] * times)

    def reset(self) -> None:
        with self._lock:
            self.messages.clear()
            self._failures.clear()

    def _next_failure(self, command: Command) -> str | None:
        with self._lock:
            queue = self._failures.get(command)
            return queue.pop(0) if queue else None

    # aiosmtpd handler hooks; they run on the server's own thread and event loop.

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if self._credentials is not None and isinstance(auth_data, LoginPassword):
            given = (auth_data.login.decode(), auth_data.password.decode())
            if given == self._credentials:
                return AuthResult(success=True, auth_data=auth_data)
        # handled=False makes aiosmtpd answer 535; with the default (True) it sends
        # nothing at all and the client waits for a reply until it times out.
        return AuthResult(success=False, handled=False)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self._credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        failure = self._next_failure("mail")
        if failure:
            return failure
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        failure = self._next_failure("rcpt")
        if failure:
            return failure
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        failure = self._next_failure("data")
        if failure:
            return failure
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        auth = session.auth_data
        with self._lock:
            self.messages.append(
                ReceivedMail(
                    mail_from=envelope.mail_from,
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    message=cast(EmailMessage, parsed),
                    login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
                )
            )
        return "250 2.0.0 OK: queued"
