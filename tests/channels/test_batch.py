"""Batch sends against the fake providers, through the real SDKs: request shapes and outcomes."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from channels.base import (
    EmailContent,
    Message,
    PermanentProviderError,
    PushContent,
    SendResult,
    SmsContent,
    TransientProviderError,
)
from channels.batch import send_all
from channels.fcm import FcmAdapter
from channels.sendgrid import SendGridAdapter, shared_content
from channels.twilio import TwilioAdapter
from core.tracking import Links, Signer, rewrite_html, rewrite_text
from core.types import Channel
from tests.fakes.provider import fcm_error_body, fcm_error_status, twilio_error_body

LINKS = Links("https://herald.example", Signer("test-tracking-secret"))
TEMPLATE = (
    "<html><body><h1>Spring sale</h1>"
    '<p>Up to 40% off: <a href="https://shop.example/sale?utm=mail">shop now</a> '
    'or <a href="https://shop.example/new">see what is new</a>.</p>'
    "</body></html>"
)


def tracked_email(make_message: Any, n: int, *, template: str = TEMPLATE) -> Message:
    """What a broadcast renders for recipient ``n``: shared body, its own tracking URLs."""
    message = make_message(Channel.EMAIL, (f"r{n}@example.com",), EmailContent("", ""))
    unsubscribe = LINKS.unsubscribe_url(message.delivery_id)
    document = template.replace("</body>", f'<a href="{unsubscribe}">unsubscribe</a></body>')
    html, _ = rewrite_html(document, LINKS, message.delivery_id)
    text, _ = rewrite_text(
        f"Spring sale: https://shop.example/sale\nUnsubscribe: {unsubscribe}",
        LINKS,
        message.delivery_id,
    )
    content = EmailContent(
        subject=f"Hi recipient {n}, the sale is on",
        text=text,
        html=html,
        headers={
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    return Message(message.delivery_id, message.tenant_id, Channel.EMAIL, message.to, content)


def substituted(value: str, substitutions: dict[str, str]) -> str:
    """What SendGrid does with a personalization's substitutions (one pass, every tag)."""
    for tag, replacement in substitutions.items():
        value = value.replace(tag, replacement)
    return value


def fake_ids(provider: Any, kind: str) -> list[str]:
    return [r.message_id for r in provider.requests(kind)]


@pytest.fixture
def sendgrid(settings):
    return SendGridAdapter(settings)


@pytest.fixture
def fcm(settings):
    adapter = FcmAdapter(settings)
    yield adapter
    adapter.close()


# --------------------------------------------------------------------------- SendGrid


def test_2500_tracked_emails_go_out_in_three_requests_that_rebuild_each_mail(
    provider, sendgrid, make_message
):
    messages = [tracked_email(make_message, n) for n in range(2500)]

    outcomes = send_all(sendgrid, messages, concurrency=4)

    requests = provider.requests("sendgrid")
    assert [r.status for r in requests] == [202, 202, 202]
    bodies = [r.json for r in requests]
    assert [len(b["personalizations"]) for b in bodies] == [1000, 1000, 500]
    sent = [(body, p) for body in bodies for p in body["personalizations"]]
    for message, (body, p), outcome in zip(messages, sent, outcomes, strict=True):
        content = message.content
        assert isinstance(content, EmailContent)
        assert p["to"] == [{"email": message.to[0]}]
        assert p["subject"] == content.subject
        assert p["headers"] == content.headers
        assert p["custom_args"] == {
            "herald_delivery_id": message.delivery_id,
            "herald_tenant_id": message.tenant_id,
        }
        # pixel, two click links and the unsubscribe URL are this recipient's own
        subs = p["substitutions"]
        assert len(subs) == 5
        assert all(url.startswith("https://herald.example/") for url in subs.values())
        text, html = (c["value"] for c in body["content"])
        assert substituted(text, subs) == content.text
        assert substituted(html, subs) == content.html
        assert isinstance(outcome, SendResult)
    # The shared body holds tags only: no recipient's token leaks into another's mail.
    assert all("/t/c/" not in c["value"] for b in bodies for c in b["content"])
    ids = fake_ids(provider, "sendgrid")
    assert [o.provider_message_id for o in outcomes if isinstance(o, SendResult)] == (
        [ids[0]] * 1000 + [ids[1]] * 1000 + [ids[2]] * 500
    )


def test_different_bodies_go_to_separate_requests(provider, sendgrid, make_message):
    other = TEMPLATE.replace("Spring sale", "Summer sale")
    messages = [
        tracked_email(make_message, 0),
        tracked_email(make_message, 1, template=other),
        tracked_email(make_message, 2),
        # Text that already looks like a tag is never substituted into: sent as written.
        tracked_email(make_message, 3, template=TEMPLATE + "<p>code -herald0-</p>"),
    ]

    outcomes = sendgrid.send_batch(messages)

    requests = provider.requests("sendgrid")
    to = [[p["to"][0]["email"] for p in r.json["personalizations"]] for r in requests]
    assert to == [
        ["r0@example.com", "r2@example.com"],
        ["r1@example.com"],
        ["r3@example.com"],
    ]
    literal = requests[2].json
    assert "substitutions" not in literal["personalizations"][0]
    last = messages[3].content
    assert isinstance(last, EmailContent) and literal["content"][1]["value"] == last.html
    assert all(isinstance(o, SendResult) for o in outcomes)
    assert [o.provider_message_id for o in outcomes] == [
        requests[0].message_id,
        requests[1].message_id,
        requests[0].message_id,
        requests[2].message_id,
    ]


def test_bodies_with_subscriber_fields_degrade_to_one_request_each(sendgrid, make_message):
    messages = [
        make_message(Channel.EMAIL, (f"r{n}@example.com",), EmailContent("Hi", f"Hi person {n}"))
        for n in range(3)
    ]

    requests, rejected = sendgrid.build_batch(messages)

    assert rejected == {}
    assert [r.indexes for r in requests] == [(0,), (1,), (2,)]


def test_a_refused_request_fails_only_its_own_messages(provider, sendgrid, make_message):
    other = TEMPLATE.replace("Spring sale", "Refused sale")
    messages = [
        tracked_email(make_message, 0, template=other),
        tracked_email(make_message, 1),
        tracked_email(make_message, 2, template=other),
        make_message(Channel.EMAIL, ("r3@example.com",), SmsContent("wrong shape")),
    ]
    provider.fail("sendgrid", 400, when="Refused sale")

    outcomes = sendgrid.send_batch(messages)

    assert [r.status for r in provider.requests("sendgrid")] == [400, 202]
    refused, sent, refused_too, bad = outcomes
    assert isinstance(refused, PermanentProviderError) and refused.code == "400"
    assert refused_too is refused
    assert isinstance(sent, SendResult)
    assert sent.provider_message_id == provider.requests("sendgrid")[1].message_id
    assert isinstance(bad, PermanentProviderError) and bad.code == "bad_content"


def test_a_503_with_nothing_sent_raises_for_the_whole_batch(provider, sendgrid, make_message):
    provider.fail("sendgrid", 503, headers={"Retry-After": "7"})
    messages = [tracked_email(make_message, n) for n in range(3)]

    with pytest.raises(TransientProviderError) as info:
        send_all(sendgrid, messages, concurrency=1)

    assert info.value.code == "503"
    assert info.value.retry_after == 7
    assert len(provider.requests("sendgrid")) == 1


def test_a_503_after_a_sent_chunk_keeps_what_went_out(provider, sendgrid, make_message):
    messages = [tracked_email(make_message, n) for n in range(1500)]
    provider.fail("sendgrid", 503, when="r1200@example.com")

    outcomes = send_all(sendgrid, messages, concurrency=1)

    assert [r.status for r in provider.requests("sendgrid")] == [202, 503]
    assert all(isinstance(o, SendResult) for o in outcomes[:1000])
    assert all(isinstance(o, TransientProviderError) for o in outcomes[1000:])


def test_shared_content_leaves_text_without_tracking_urls_alone():
    content = EmailContent("Hi", "Plain https://shop.example/sale", "<p>no links</p>")

    shared = shared_content(content)

    assert (shared.text, shared.html, shared.substitutions) == (content.text, content.html, {})


# --------------------------------------------------------------------------- FCM


def push(make_message: Any, *tokens: str) -> Message:
    content = PushContent(title="Sale", body="Up to 40% off", data={"campaign": "spring"})
    message: Message = make_message(Channel.PUSH, tokens, content)
    return message


def test_600_pushes_take_two_send_each_calls_and_report_the_dead_token(provider, fcm, make_message):
    messages = [push(make_message, f"tok-{n:04d}") for n in range(598)]
    messages += [push(make_message, "dead-one"), push(make_message, "tok-spare", "dead-two")]
    for token in ("dead-one", "dead-two"):
        provider.fail(
            "fcm", fcm_error_status("UNREGISTERED"), body=fcm_error_body("UNREGISTERED"), when=token
        )

    calls, rejected = fcm.plan_batch(messages)
    outcomes = send_all(fcm, messages, concurrency=1)

    assert rejected == {}
    assert [len(c.fcm_messages) for c in calls] == [500, 101]
    assert [len(c.members) for c in calls] == [500, 100]
    sent = [r.json["message"] for r in provider.requests("fcm")]
    assert len(sent) == 601
    by_token = {m["token"]: m for m in sent}
    assert len(by_token) == 601  # every token exactly once
    for message, outcome in zip(messages[:598], outcomes, strict=False):
        assert by_token[message.to[0]]["data"]["herald_delivery_id"] == message.delivery_id
        assert isinstance(outcome, SendResult) and outcome.invalid_tokens == ()
    dead, partly = outcomes[598:]
    assert isinstance(dead, PermanentProviderError)
    assert (dead.code, dead.invalid_tokens, dead.recipient) == ("UNREGISTERED", ("dead-one",), True)
    assert isinstance(partly, SendResult) and partly.invalid_tokens == ("dead-two",)


def test_all_pushes_failing_transiently_raise(provider, fcm, make_message):
    provider.fail("fcm", 503, times=None)

    with pytest.raises(TransientProviderError):
        fcm.send_batch([push(make_message, "tok-a"), push(make_message, "tok-b")])

    assert len(provider.requests("fcm")) == 2


def test_a_push_without_tokens_fails_alone(provider, fcm, make_message):
    outcomes = fcm.send_batch([push(make_message), push(make_message, "tok-a")])

    assert isinstance(outcomes[0], PermanentProviderError) and outcomes[0].code == "no_tokens"
    assert isinstance(outcomes[1], SendResult)


# --------------------------------------------------------------------------- fallback pool


def sms(make_message: Any, n: int) -> Message:
    message: Message = make_message(Channel.SMS, (f"+1555000{n:04d}",), SmsContent(f"Sale {n}"))
    return message


def test_adapters_without_a_batch_api_send_one_by_one_on_a_bounded_pool(
    provider, settings, make_message
):
    messages = [sms(make_message, n) for n in range(20)]
    provider.fail(
        "twilio",
        400,
        body=twilio_error_body(21211, "not a valid phone number"),
        when="To=%2B15550000007",
    )
    calls: list[str] = []
    lock = threading.Lock()

    def before_each() -> None:
        with lock:
            calls.append(threading.current_thread().name)

    outcomes = send_all(TwilioAdapter(settings), messages, concurrency=3, before_each=before_each)

    assert len(calls) == 20
    assert 1 <= len(set(calls)) <= 3
    assert threading.main_thread().name not in calls
    sid_by_number = {r.form["To"]: r.message_id for r in provider.requests("twilio")}
    for n, (message, outcome) in enumerate(zip(messages, outcomes, strict=True)):
        if n == 7:
            assert isinstance(outcome, PermanentProviderError)
            assert (outcome.code, outcome.recipient) == ("21211", True)
        else:
            assert isinstance(outcome, SendResult)
            assert outcome.provider_message_id == sid_by_number[message.to[0]]


def test_fallback_raises_only_when_every_send_failed_transiently(provider, settings, make_message):
    adapter = TwilioAdapter(settings)
    provider.fail("twilio", 503, times=None)

    with pytest.raises(TransientProviderError):
        send_all(adapter, [sms(make_message, n) for n in range(4)], concurrency=2)

    provider.reset()
    provider.fail("twilio", 503, when="To=%2B15550000001")
    outcomes = send_all(adapter, [sms(make_message, n) for n in range(3)], concurrency=2)
    assert [type(o) for o in outcomes] == [SendResult, TransientProviderError, SendResult]


def test_a_failing_pacer_stops_the_pool(provider, settings, make_message):
    def before_each() -> None:
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):
        send_all(
            TwilioAdapter(settings),
            [sms(make_message, n) for n in range(5)],
            concurrency=1,
            before_each=before_each,
        )

    assert provider.requests("twilio") == []


def test_send_all_checks_its_arguments(settings):
    adapter = TwilioAdapter(settings)

    assert send_all(adapter, [], concurrency=1) == []
    with pytest.raises(ValueError):
        send_all(adapter, [], concurrency=0)
