"""SmtpAdapter against a real SMTP server on loopback, through the real ``aiosmtplib``."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from channels.base import EmailContent, PermanentProviderError, TransientProviderError
from channels.smtp import SmtpAdapter, parse_smtp_url
from core.types import Channel
from tests.fakes.net import free_port
from tests.fakes.smtp import FakeSmtp

USER = "herald@acme.test"
PASSWORD = "p@ss:w/rd%"  # needs percent-encoding in the URL


@pytest.fixture
def smtp() -> Iterator[FakeSmtp]:
    with FakeSmtp() as server:
        yield server


@pytest.fixture
def smtp_auth() -> Iterator[FakeSmtp]:
    with FakeSmtp(username=USER, password=PASSWORD) as server:
        yield server


@pytest.fixture
def email(make_message):
    def make(html: str | None = "<p>Hi <b>Ada</b></p>", to: str = "ada@example.com"):
        content = EmailContent(subject="Your order shipped", text="Hi Ada", html=html)
        return make_message(Channel.EMAIL, (to,), content)

    return make


@pytest.fixture
def adapter(make_settings, smtp):
    return SmtpAdapter(make_settings(smtp_url=smtp.url()))


def test_send_delivers_text_and_html(smtp, make_settings, email):
    settings = make_settings(smtp_url=smtp.url(), email_from="Acme Alerts <alerts@acme.test>")
    message = email()

    result = SmtpAdapter(settings).send(message)

    [mail] = smtp.messages
    assert mail.mail_from == "alerts@acme.test"
    assert mail.rcpt_tos == ("ada@example.com",)
    msg = mail.message
    assert msg["From"] == "Acme Alerts <alerts@acme.test>"
    assert msg["To"] == "ada@example.com"
    assert msg["Subject"] == "Your order shipped"
    assert msg["Message-ID"] == f"<{message.delivery_id}@herald>"
    assert msg["X-Herald-Delivery-Id"] == message.delivery_id
    assert msg["X-Herald-Tenant-Id"] == message.tenant_id
    assert msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content().strip() == "Hi Ada"
    assert msg.get_body(("html",)).get_content().strip() == "<p>Hi <b>Ada</b></p>"
    assert result.provider == "smtp"
    assert result.provider_message_id == f"<{message.delivery_id}@herald>"


def test_text_only_mail_has_no_html_part(smtp, adapter, email):
    adapter.send(email(html=None))

    [mail] = smtp.messages
    assert mail.message.get_content_type() == "text/plain"
    assert mail.message.get_content().strip() == "Hi Ada"


def test_retries_reuse_the_message_id(smtp, adapter, email):
    message = email()

    first = adapter.send(message)
    second = adapter.send(message)

    assert first == second
    assert [m.message["Message-ID"] for m in smtp.messages] == [first.provider_message_id] * 2


def test_auth_with_correct_credentials(smtp_auth, make_settings, email):
    adapter = SmtpAdapter(make_settings(smtp_url=smtp_auth.url(USER, PASSWORD)))

    adapter.send(email())

    [mail] = smtp_auth.messages
    assert mail.login == USER


def test_wrong_password_is_permanent_auth(smtp_auth, make_settings, email):
    adapter = SmtpAdapter(make_settings(smtp_url=smtp_auth.url(USER, "wrong")))

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(email())

    assert info.value.code == "auth"
    assert info.value.recipient is False
    assert "535" in info.value.message
    assert "wrong" not in str(info.value)
    assert smtp_auth.messages == []


def test_missing_credentials_refused_at_mail_is_provider_level(smtp_auth, make_settings, email):
    adapter = SmtpAdapter(make_settings(smtp_url=smtp_auth.url()))

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(email())

    assert info.value.code == "530"
    assert info.value.recipient is False
    assert "Authentication required" in info.value.message


def test_rcpt_550_is_permanent_and_the_recipients_fault(smtp, adapter, email):
    smtp.fail("rcpt", 550, "5.1.1 no such user")

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(email())

    assert info.value.code == "550"
    assert info.value.recipient is True
    assert "5.1.1 no such user" in info.value.message
    assert smtp.messages == []


def test_rcpt_450_is_transient(smtp, adapter, email):
    smtp.fail("rcpt", 450, "4.2.1 mailbox busy")

    with pytest.raises(TransientProviderError) as info:
        adapter.send(email())

    assert info.value.code == "450"
    assert "mailbox busy" in info.value.message
    # The failure was one-shot: the next attempt goes through.
    adapter.send(email())
    assert len(smtp.messages) == 1


def test_sender_451_is_transient(smtp, adapter, email):
    smtp.fail("mail", 451, "4.3.0 try again")

    with pytest.raises(TransientProviderError) as info:
        adapter.send(email())

    assert info.value.code == "451"


def test_data_451_is_transient(smtp, adapter, email):
    smtp.fail("data", 451, "4.3.0 try later")

    with pytest.raises(TransientProviderError) as info:
        adapter.send(email())

    assert info.value.code == "451"
    assert "try later" in info.value.message
    assert smtp.messages == []


def test_data_554_is_permanent_provider_level(smtp, adapter, email):
    smtp.fail("data", 554, "5.7.1 message rejected as spam")

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(email())

    assert info.value.code == "554"
    assert info.value.recipient is False
    assert "rejected as spam" in info.value.message


def test_nothing_listening_is_transient_network(make_settings, email):
    adapter = SmtpAdapter(make_settings(smtp_url=f"smtp://127.0.0.1:{free_port()}"))

    with pytest.raises(TransientProviderError) as info:
        adapter.send(email())

    assert info.value.code == "network"


def test_silent_server_times_out_as_transient(make_settings, email):
    # Accepts connections (into the backlog) but never sends the 220 greeting.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        adapter = SmtpAdapter(make_settings(smtp_url=f"smtp://127.0.0.1:{port}"), timeout=0.3)

        with pytest.raises(TransientProviderError) as info:
            adapter.send(email())

    assert info.value.code == "timeout"


def test_unusable_recipient_is_permanent_before_connecting(make_settings, email):
    # Nothing listens here: the error must come before any connection attempt.
    adapter = SmtpAdapter(make_settings(smtp_url=f"smtp://127.0.0.1:{free_port()}"))

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(email(to="ada@example.com\r\nBcc: eve@example.com"))

    assert info.value.code == "bad_recipient"
    assert info.value.recipient is True


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "http://user:hunter2@mail.example.com",
        "mail.example.com:25",
        "smtp://",
        "smtp://user:hunter2@:25",
        "smtp://mail.example.com:notaport",
        "smtp://mail.example.com/some/path",
        "smtp://mail.example.com?tls=yes",
        "smtps://mail.example.com?starttls=true",
    ],
)
def test_bad_url_is_a_constructor_error(make_settings, url):
    with pytest.raises(ValueError, match="HERALD_SMTP_URL") as info:
        SmtpAdapter(make_settings(smtp_url=url))

    assert "hunter2" not in str(info.value)


def test_bad_from_address_is_a_constructor_error(make_settings, smtp):
    with pytest.raises(ValueError, match="HERALD_EMAIL_FROM"):
        SmtpAdapter(make_settings(smtp_url=smtp.url(), email_from="Herald"))


def test_url_defaults_and_percent_decoding():
    plain = parse_smtp_url("smtp://mail.example.com")
    assert (plain.host, plain.port, plain.use_tls, plain.start_tls) == (
        "mail.example.com",
        25,
        False,
        False,
    )
    assert plain.username is None and plain.password is None

    implicit = parse_smtp_url("smtps://u%40acme.test:p%40ss%3Aw%2Frd@mail.example.com")
    assert (implicit.port, implicit.use_tls, implicit.start_tls) == (465, True, False)
    assert (implicit.username, implicit.password) == ("u@acme.test", "p@ss:w/rd")
    assert "p@ss" not in repr(implicit)

    upgraded = parse_smtp_url("smtp://user:pw@mail.example.com:587?starttls=true")
    assert (upgraded.port, upgraded.use_tls, upgraded.start_tls) == (587, False, True)
