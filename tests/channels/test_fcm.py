"""FcmAdapter against the fake Google token + FCM v1 endpoints, through real firebase-admin."""

from __future__ import annotations

import time

import pytest

from channels.base import PermanentProviderError, PushContent, TransientProviderError
from channels.fcm import FcmAdapter
from core.types import Channel
from tests.fakes.provider import dead_url, fcm_error_body, fcm_error_status


@pytest.fixture
def adapter(settings):
    adapter = FcmAdapter(settings)
    yield adapter
    adapter.close()


@pytest.fixture
def push(make_message):
    def make(*tokens: str):
        content = PushContent(title="Order shipped", body="It is on its way", data={"order": "42"})
        return make_message(Channel.PUSH, tokens or ("tok-good",), content)

    return make


def fail_token(provider, token: str, error_code: str, **kwargs) -> None:
    provider.fail(
        "fcm", fcm_error_status(error_code), body=fcm_error_body(error_code), when=token, **kwargs
    )


def test_send_uses_oauth_token_and_fcm_v1_format(provider, adapter, push):
    message = push("tok-good")

    result = adapter.send(message)

    assert provider.requests("token"), "an OAuth token must be fetched from token_uri"
    [req] = provider.requests("fcm")
    assert req.path == "/v1/projects/herald-test/messages:send"
    assert req.headers["authorization"].startswith("Bearer ya29.fake-")
    assert req.json["message"] == {
        "token": "tok-good",
        "notification": {"title": "Order shipped", "body": "It is on its way"},
        "data": {"order": "42", "herald_delivery_id": message.delivery_id},
    }
    assert result.provider == "fcm"
    assert result.provider_message_id.startswith("projects/herald-test/messages/")
    assert result.invalid_tokens == ()


def test_send_does_not_warn(adapter, push, recwarn):
    adapter.send(push("tok-good"))

    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_several_tokens_join_message_ids(provider, adapter, push):
    result = adapter.send(push("tok-a", "tok-b"))

    ids = result.provider_message_id.split(",")
    assert len(ids) == 2
    assert {r.json["message"]["token"] for r in provider.requests("fcm")} == {"tok-a", "tok-b"}


def test_all_unregistered_is_permanent_with_invalid_tokens(provider, adapter, push):
    fail_token(provider, "tok-dead", "UNREGISTERED")

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(push("tok-dead"))

    assert info.value.code == "UNREGISTERED"
    assert info.value.invalid_tokens == ("tok-dead",)


def test_not_found_is_permanent_with_invalid_tokens(provider, adapter, push):
    provider.fail("fcm", 404, when="tok-gone")  # NOT_FOUND with no FcmError detail

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(push("tok-gone"))

    assert info.value.code == "NOT_FOUND"
    assert info.value.invalid_tokens == ("tok-gone",)
    assert info.value.recipient


def test_invalid_argument_is_a_malformed_message_not_a_dead_token(provider, adapter, push):
    body = fcm_error_body("INVALID_ARGUMENT", "Message payload exceeds the 4096 bytes limit")
    provider.fail("fcm", 400, body=body, times=None)

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(push("tok-a", "tok-b"))

    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.invalid_tokens == ()
    assert "malformed" in str(info.value) and "4096" in str(info.value)


def test_invalid_argument_beside_a_dead_token_reports_only_the_dead_one(provider, adapter, push):
    fail_token(provider, "tok-dead", "UNREGISTERED")
    fail_token(provider, "tok-live", "INVALID_ARGUMENT")

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(push("tok-dead", "tok-live"))

    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.invalid_tokens == ("tok-dead",)


def test_invalid_argument_of_one_token_among_sent_ones_removes_nothing(provider, adapter, push):
    fail_token(provider, "tok-odd", "INVALID_ARGUMENT")

    result = adapter.send(push("tok-good", "tok-odd"))

    assert result.invalid_tokens == ()


def test_mixed_result_succeeds_and_reports_dead_token(provider, adapter, push):
    fail_token(provider, "tok-dead", "UNREGISTERED")

    result = adapter.send(push("tok-good", "tok-dead"))

    assert result.invalid_tokens == ("tok-dead",)
    assert "," not in result.provider_message_id
    assert result.provider_message_id.startswith("projects/herald-test/messages/")


def test_quota_exceeded_is_transient_with_retry_after(provider, adapter, push):
    fail_token(provider, "tok-busy", "QUOTA_EXCEEDED", headers={"Retry-After": "3"})

    with pytest.raises(TransientProviderError) as info:
        adapter.send(push("tok-busy"))

    assert info.value.code == "QUOTA_EXCEEDED"
    assert info.value.retry_after == 3


def test_unregistered_plus_unavailable_is_transient_and_keeps_invalid_tokens(
    provider, adapter, push
):
    fail_token(provider, "tok-dead", "UNREGISTERED")
    fail_token(provider, "tok-flaky", "UNAVAILABLE")

    with pytest.raises(TransientProviderError) as info:
        adapter.send(push("tok-dead", "tok-flaky"))

    assert info.value.invalid_tokens == ("tok-dead",)


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_is_transient_without_sdk_retries(provider, adapter, push, status):
    provider.fail("fcm", status, times=None)
    started = time.monotonic()

    with pytest.raises(TransientProviderError):
        adapter.send(push("tok-good"))

    assert len(provider.requests("fcm")) == 1, "firebase-admin must not retry by itself"
    assert time.monotonic() - started < 1.0


def test_sender_id_mismatch_is_permanent(provider, adapter, push):
    fail_token(provider, "tok-other-project", "SENDER_ID_MISMATCH")

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(push("tok-other-project"))

    assert info.value.code == "SENDER_ID_MISMATCH"
    assert info.value.invalid_tokens == ()


def test_unreachable_fcm_is_transient(make_settings, push):
    adapter = FcmAdapter(make_settings(fcm_base_url=dead_url()))
    try:
        with pytest.raises(TransientProviderError):
            adapter.send(push("tok-good"))
    finally:
        adapter.close()


def test_rejected_service_account_is_permanent_auth(provider, adapter, push):
    provider.fail("token", 400, body={"error": "invalid_grant", "error_description": "bad key"})

    with pytest.raises(PermanentProviderError) as info:
        adapter.send(push("tok-good"))

    assert info.value.code == "auth"
    assert provider.requests("fcm") == []


def test_several_adapters_coexist(settings, push):
    first, second = FcmAdapter(settings), FcmAdapter(settings)
    try:
        first.send(push("tok-1"))
        second.send(push("tok-2"))
    finally:
        first.close()
        second.close()
