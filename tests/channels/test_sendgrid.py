"""SendGridAdapter against the fake SendGrid API, through the real ``sendgrid`` SDK."""

from __future__ import annotations

import pytest

from channels.base import EmailContent, PermanentProviderError, TransientProviderError
from channels.sendgrid import SendGridAdapter
from core.types import Channel
from tests.fakes.provider import dead_url, sendgrid_error_body


@pytest.fixture
def email(make_message):
    def make(html: str | None = "<p>Hi <b>Ada</b></p>"):
        content = EmailContent(subject="Your order shipped", text="Hi Ada", html=html)
        return make_message(Channel.EMAIL, ("ada@example.com",), content)

    return make


def test_send_arrives_in_sendgrid_wire_format(provider, make_settings, email):
    adapter = SendGridAdapter(make_settings(email_from="Acme Alerts <alerts@acme.test>"))
    message = email()

    result = adapter.send(message)

    [req] = provider.requests("sendgrid")
    assert req.status == 202
    assert req.headers["authorization"] == "Bearer SG.test"
    mail = req.json
    assert mail["from"] == {"email": "alerts@acme.test", "name": "Acme Alerts"}
    assert mail["personalizations"][0]["to"] == [{"email": "ada@example.com"}]
    assert mail["subject"] == "Your order shipped"
    assert mail["content"] == [
        {"type": "text/plain", "value": "Hi Ada"},
        {"type": "text/html", "value": "<p>Hi <b>Ada</b></p>"},
    ]
    assert mail["custom_args"] == {
        "herald_delivery_id": message.delivery_id,
        "herald_tenant_id": message.tenant_id,
    }
    assert result.provider == "sendgrid"
    assert result.provider_message_id  # the fake's X-Message-Id
    assert result.provider_message_id != message.delivery_id


def test_text_only_mail_has_no_html_part(provider, settings, email):
    SendGridAdapter(settings).send(email(html=None))

    [req] = provider.requests("sendgrid")
    assert req.json["content"] == [{"type": "text/plain", "value": "Hi Ada"}]


def test_missing_message_id_header_falls_back_to_delivery_id(provider, settings, email):
    provider.fail("sendgrid", 202, body=b"")  # a 202 without X-Message-Id
    message = email()

    result = SendGridAdapter(settings).send(message)

    assert result.provider_message_id == message.delivery_id


def test_429_is_transient_with_retry_after(provider, settings, email):
    provider.fail("sendgrid", 429, headers={"Retry-After": "3"})

    with pytest.raises(TransientProviderError) as info:
        SendGridAdapter(settings).send(email())

    assert info.value.retry_after == 3
    assert info.value.code == "429"


def test_500_is_transient(provider, settings, email):
    provider.fail("sendgrid", 500)

    with pytest.raises(TransientProviderError) as info:
        SendGridAdapter(settings).send(email())

    assert info.value.retry_after is None


def test_400_is_permanent_with_sendgrid_message(provider, settings, email):
    provider.fail(
        "sendgrid",
        400,
        body=sendgrid_error_body("Does not contain a valid address.", "personalizations.0.to"),
    )

    with pytest.raises(PermanentProviderError) as info:
        SendGridAdapter(settings).send(email())

    assert info.value.code == "400"
    assert "Does not contain a valid address." in info.value.message


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_is_permanent_auth(provider, settings, email, status):
    provider.fail("sendgrid", status)

    with pytest.raises(PermanentProviderError) as info:
        SendGridAdapter(settings).send(email())

    assert info.value.code == "auth"


def test_unreachable_host_is_transient(make_settings, email):
    adapter = SendGridAdapter(make_settings(sendgrid_base_url=dead_url()))

    with pytest.raises(TransientProviderError) as info:
        adapter.send(email())

    assert info.value.code == "network"


def test_slow_provider_times_out_as_transient(provider, settings, email):
    provider.fail("sendgrid", 202, delay=1.0)
    adapter = SendGridAdapter(settings, timeout=0.2)

    with pytest.raises(TransientProviderError) as info:
        adapter.send(email())

    assert info.value.code == "timeout"


def test_sends_share_a_kept_alive_connection(provider, settings, email):
    """The SDK alone opened a connection (and, on https, a TLS handshake) per email."""
    adapter = SendGridAdapter(settings)
    provider.fail("sendgrid", 400, body=sendgrid_error_body("bad address"))
    with pytest.raises(PermanentProviderError):
        adapter.send(email())

    results = [adapter.send(email()) for _ in range(5)]

    requests = provider.requests("sendgrid")
    assert [r.status for r in requests] == [400] + [202] * 5
    assert len({r.peer for r in requests}) == 1, [r.peer for r in requests]  # one connection
    assert all(r.provider_message_id for r in results)


def test_a_connection_the_server_closed_is_replaced_not_failed(provider, settings, email):
    adapter = SendGridAdapter(settings)
    provider.fail("sendgrid", 202, body=b"", headers={"Connection": "close"})
    adapter.send(email())  # answered, then the server closes the connection

    adapter.send(email())
    adapter.send(email())

    first, second, third = provider.requests("sendgrid")
    assert (first.status, second.status, third.status) == (202, 202, 202)
    assert first.peer != second.peer == third.peer
