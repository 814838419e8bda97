"""WebhookAdapter against the fake receiver; signatures checked by an independent HMAC."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from channels.base import PermanentProviderError, TransientProviderError, WebhookContent
from channels.webhook import WebhookAdapter, sign
from core.types import Channel
from tests.fakes.provider import dead_url

SECRET = "whsec_" + base64.b64encode(b"test-secret-for-webhook-tests!!").decode()
PAYLOAD = {"type": "order.shipped", "data": {"order_id": "ord_42", "items": [1, 2]}, "ü": "é"}


def expected_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks, written out here rather than reusing the adapter's ``sign``."""
    key = base64.b64decode(secret[len("whsec_") :])
    mac = hmac.new(key, msg_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


@pytest.fixture
def adapter(make_settings):
    adapter = WebhookAdapter(make_settings(webhook_secret=SECRET))
    yield adapter
    adapter.close()


@pytest.fixture
def hook(provider, make_message):
    def make(name: str = "default", url: str | None = None):
        target = url or provider.webhook_url(name)
        return make_message(Channel.WEBHOOK, (target,), WebhookContent(payload=PAYLOAD))

    return make


def test_signed_post_verifies_independently(provider, adapter, hook):
    message = hook("orders")
    before = int(time.time())

    result = adapter.send(message)

    [req] = provider.requests("webhook")
    assert req.path == "/hooks/orders"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"] == "Herald-Webhooks/1"
    assert req.headers["webhook-id"] == message.delivery_id
    timestamp = req.headers["webhook-timestamp"]
    assert before <= int(timestamp) <= int(time.time())
    assert req.headers["webhook-signature"] == expected_signature(
        SECRET, message.delivery_id, timestamp, req.body
    )
    assert json.loads(req.body) == PAYLOAD
    assert b" " not in req.body.replace(b"order.shipped", b"")  # compact separators
    assert result.provider == "webhook"
    assert result.provider_message_id == message.delivery_id


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


def test_410_is_permanent_gone(provider, adapter, hook):
    provider.fail("webhook", 410, body="endpoint removed")

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(hook())

    assert info.value.code == "410"
    assert "endpoint removed" in info.value.message


def test_429_is_transient_with_retry_after(provider, adapter, hook):
    provider.fail("webhook", 429, headers={"Retry-After": "3"})

    with pytest.raises(TransientProviderError) as info:
        adapter.send(hook())

    assert info.value.retry_after == 3
    assert info.value.code == "429"


def test_500_is_transient(provider, adapter, hook):
    provider.fail("webhook", 500)

    with pytest.raises(TransientProviderError) as info:
        adapter.send(hook())

    assert info.value.code == "500"


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
    adapter = WebhookAdapter(make_settings(webhook_timeout_seconds=0.1))

    with pytest.raises(TransientProviderError) as info:
        adapter.send(hook())

    assert info.value.code == "timeout"
    adapter.close()


def test_bad_url_is_permanent(adapter, hook):
    with pytest.raises(PermanentProviderError) as info:
        adapter.send(hook(url="ftp://example.invalid/hook"))

    assert info.value.code == "bad_url"
