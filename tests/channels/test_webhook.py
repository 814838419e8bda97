"""WebhookAdapter against the fake receiver; signatures checked by the standardwebhooks package."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from channels.base import PermanentProviderError, TransientProviderError, WebhookContent
from channels.webhook import WebhookAdapter, sign, with_secrets
from core.types import Channel
from tests.fakes.provider import dead_url

SECRET = "whsec_" + base64.b64encode(b"test-secret-for-webhook-tests!!").decode()
OTHER = "whsec_" + base64.b64encode(b"another-secret-for-the-tests!!!").decode()
PAYLOAD = {"type": "order.shipped", "data": {"order_id": "ord_42", "items": [1, 2]}, "ü": "é"}
LOOPBACK = ["127.0.0.0/8", "::1/128"]


def verifies(secret: str, headers: dict[str, str], body: bytes) -> bool:
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


@pytest.fixture
def adapter(make_settings: Any) -> Iterator[WebhookAdapter]:
    adapter = WebhookAdapter(make_settings(webhook_allowed_networks=LOOPBACK))
    yield adapter
    adapter.close()


@pytest.fixture
def hook(provider: Any, make_message: Any) -> Any:
    def make(name: str = "default", url: str | None = None, secrets: tuple[str, ...] = (SECRET,)):
        target = url or provider.webhook_url(name)
        message = make_message(Channel.WEBHOOK, (target,), WebhookContent(payload=PAYLOAD))
        return with_secrets(message, secrets)

    return make


@contextmanager
def listener(host: str) -> Iterator[tuple[int, socket.socket]]:
    """A loopback port that records whether anything connected to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield sock.getsockname()[1], sock
    finally:
        sock.close()


def connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_signed_post_verifies_with_standard_webhooks(provider, adapter, hook):
    message = hook("orders")
    before = int(time.time())

    result = adapter.send(message)

    [req] = provider.requests("webhook")
    assert req.path == "/hooks/orders"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"] == "Herald-Webhooks/1"
    assert req.headers["webhook-id"] == message.delivery_id
    assert before <= int(req.headers["webhook-timestamp"]) <= int(time.time())
    assert verifies(SECRET, req.headers, req.body)
    assert not verifies(OTHER, req.headers, req.body)
    assert json.loads(req.body) == PAYLOAD
    assert b" " not in req.body.replace(b"order.shipped", b"")  # compact separators
    assert result.provider == "webhook"
    assert result.provider_message_id == message.delivery_id


def test_two_secrets_sign_twice_space_separated(provider, adapter, hook):
    adapter.send(hook(secrets=(OTHER, SECRET)))

    [req] = provider.requests("webhook")
    assert len(req.headers["webhook-signature"].split(" ")) == 2
    assert verifies(OTHER, req.headers, req.body)
    assert verifies(SECRET, req.headers, req.body)


def test_an_unsigned_webhook_is_not_sent(provider, adapter, hook):
    with pytest.raises(PermanentProviderError) as info:
        adapter.send(hook(secrets=()))

    assert info.value.code == "unsigned"
    assert provider.requests("webhook") == []


def test_webhook_id_is_stable_across_resends(provider, adapter, hook):
    message = hook()

    adapter.send(message)
    adapter.send(message)

    first, second = provider.requests("webhook")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == message.delivery_id
    assert first.body == second.body


def test_sign_matches_standard_webhooks_test_vector():
    # The example from the Standard Webhooks reference libraries.
    assert (
        sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_410_is_permanent_and_keeps_only_the_status(provider, adapter, hook):
    provider.fail("webhook", 410, body="endpoint removed; internal token abc123")

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(hook())

    assert info.value.code == "410"
    assert "HTTP 410 Gone" in info.value.message
    assert "endpoint removed" not in info.value.message
    assert "abc123" not in str(info.value)


def test_error_bodies_never_reach_the_reason(provider, adapter, hook):
    provider.fail("webhook", 500, body={"secret": "s3cr3t-from-an-internal-service"})

    with pytest.raises(TransientProviderError) as info:
        adapter.send(hook())

    assert info.value.message.endswith("answered HTTP 500 Internal Server Error")
    assert "s3cr3t" not in str(info.value)


def test_429_is_transient_with_retry_after(provider, adapter, hook):
    provider.fail("webhook", 429, headers={"Retry-After": "3"})

    with pytest.raises(TransientProviderError) as info:
        adapter.send(hook())

    assert info.value.retry_after == 3
    assert info.value.code == "429"


def test_other_4xx_is_permanent(provider, adapter, hook):
    provider.fail("webhook", 400)

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(hook())

    assert info.value.code == "400"


def test_redirect_is_not_followed(provider, adapter, hook):
    provider.fail("webhook", 302, headers={"Location": provider.webhook_url("elsewhere")})

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(hook())

    assert info.value.code == "302"
    assert "redirects are not followed" in info.value.message
    assert [r.path for r in provider.requests("webhook")] == ["/hooks/default"]


def test_only_the_failing_endpoint_fails(provider, adapter, hook):
    provider.fail("webhook", 503, when="/hooks/broken", times=None)

    adapter.send(hook("healthy"))
    with pytest.raises(TransientProviderError):
        adapter.send(hook("broken"))


def test_unreachable_receiver_is_transient(adapter, hook):
    with pytest.raises(TransientProviderError) as info:
        adapter.send(hook(url=dead_url() + "/hooks/x"))

    assert info.value.code == "network"


def test_slow_receiver_times_out_as_transient(provider, make_settings, hook):
    provider.fail("webhook", 200, delay=0.5)
    adapter = WebhookAdapter(
        make_settings(webhook_timeout_seconds=0.1, webhook_allowed_networks=LOOPBACK)
    )

    with pytest.raises(TransientProviderError) as info:
        adapter.send(hook())

    assert info.value.code == "timeout"
    adapter.close()


def test_bad_url_is_permanent(adapter, hook):
    with pytest.raises(PermanentProviderError) as info:
        adapter.send(hook(url="ftp://example.invalid/hook"))

    assert info.value.code == "bad_url"


# ---- the SSRF guard, against loopback targets only


def test_loopback_is_refused_by_default_without_connecting(make_settings, hook):
    adapter = WebhookAdapter(make_settings())  # no allowlist
    with listener("127.0.0.1") as (port, sock):
        with pytest.raises(PermanentProviderError) as info:
            adapter.send(hook(url=f"http://127.0.0.1:{port}/hooks/x"))
        assert not connected(sock)
    adapter.close()

    assert info.value.code == "blocked_address"
    assert info.value.recipient
    assert "127.0.0.1, a loopback address" in info.value.message


def test_an_address_outside_the_allowlist_is_refused_without_connecting(make_settings, hook):
    adapter = WebhookAdapter(make_settings(webhook_allowed_networks=["127.0.0.1/32"]))
    with listener("127.0.0.2") as (port, sock):
        with pytest.raises(PermanentProviderError) as info:
            adapter.send(hook(url=f"http://127.0.0.2:{port}/hooks/x"))
        assert not connected(sock)
    adapter.close()

    assert info.value.code == "blocked_address"
    assert "a loopback address" in info.value.message
    assert "HERALD_WEBHOOK_ALLOWED_NETWORKS" in info.value.message


def test_ipv4_mapped_spelling_of_a_refused_address_is_refused(make_settings, hook):
    adapter = WebhookAdapter(make_settings(webhook_allowed_networks=["127.0.0.1/32"]))
    with listener("127.0.0.2") as (port, sock):
        with pytest.raises(PermanentProviderError) as info:
            adapter.send(hook(url=f"http://[::ffff:127.0.0.2]:{port}/hooks/x"))
        assert not connected(sock)
    adapter.close()

    assert info.value.code == "blocked_address"


class Resolver:
    """Answers for made-up names, in turn; every other name resolves for real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in self.answers:
            return self._real(host, port, *args, **kwargs)
        self.asked.append(name)
        turn = self.answers[name]
        address = turn.pop(0) if len(turn) > 1 else turn[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]


def test_a_name_is_resolved_once_and_the_checked_address_used(
    provider, make_settings, hook, monkeypatch
):
    """DNS rebinding: the second answer (127.0.0.2, refused) is never asked for, let alone
    connected to; the request goes to the first, checked answer with the name as Host."""
    resolver = Resolver(monkeypatch, {"rebind.test": ["127.0.0.1", "127.0.0.2"]})
    adapter = WebhookAdapter(make_settings(webhook_allowed_networks=["127.0.0.1/32"]))
    port = provider.url.rsplit(":", 1)[1]

    adapter.send(hook(url=f"http://rebind.test:{port}/hooks/pinned"))
    adapter.close()

    # By path: under load a previous test's slow request can land after the reset.
    [req] = [r for r in provider.requests("webhook") if r.path == "/hooks/pinned"]
    assert req.headers["host"] == f"rebind.test:{port}"
    assert resolver.asked == ["rebind.test"]


def test_proxy_variables_are_ignored(provider, adapter, hook, monkeypatch):
    """A proxy would connect on our behalf to an address nobody checked."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(var, dead_url())

    adapter.send(hook(name="unproxied"))

    # Through the (dead) proxy nothing would arrive. Filter by path: under load a previous
    # test's slow request can land after the reset.
    assert [r.path for r in provider.requests("webhook")].count("/hooks/unproxied") == 1
