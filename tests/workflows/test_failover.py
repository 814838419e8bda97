"""Provider failover: a channel's next provider takes over when the first cannot send."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from temporalio.api.enums.v1 import EventType

from store.db import read_scope
from store.deliveries import history
from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.provider import FakeProvider, sendgrid_error_body
from tests.fakes.smtp import FakeSmtp

FAST = {"initial_interval": "PT0.2S", "backoff_coefficient": 1}


@pytest.fixture
def smtp() -> Iterator[FakeSmtp]:
    with FakeSmtp(username="herald", password="p@ss word") as server:
        yield server


async def _welcome(herald: Herald, retry: dict[str, object] | None = None) -> str:
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    step: dict[str, object] = {"channel": "email", "subject": "Hi {{ data.name }}", "text": "x"}
    if retry:
        step["retry"] = retry
    await herald.put_flow("welcome", event_type="user.signup", steps=[step])
    return sub


async def _summaries(herald: Herald, workflow_id: str) -> list[str]:
    handle = herald.client.get_workflow_handle(workflow_id)
    return [
        e.user_metadata.summary.data.decode().strip('"')
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


async def test_sendgrid_401_fails_over_to_smtp(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider, smtp: FakeSmtp
) -> None:
    herald = await herald_factory(smtp_url=smtp.url("herald", "p@ss word"))
    sub = await _welcome(herald)
    fresh_provider.fail("sendgrid", 401, body=sendgrid_error_body("The provided key is invalid"))

    published = await herald.publish(type="user.signup", to=[sub], data={"name": "Ada"})
    event = await herald.wait_event(published["id"])

    (n,) = event["notifications"]
    (d,) = n["deliveries"]
    assert (n["status"], d["status"], d["provider"]) == ("sent", "sent", "smtp")
    assert d["provider_message_id"] == f"<{d['id']}@herald>"
    assert d["attempts"] == 2  # one refused by SendGrid, one accepted by SMTP
    # An auth error is not retried against SendGrid: it fails over at once.
    assert [r.status for r in fresh_provider.requests("sendgrid")] == [401]
    (mail,) = smtp.messages
    assert mail.rcpt_tos == (f"{sub}@example.com",)
    assert mail.login == "herald"
    assert mail.message["Subject"] == "Hi Ada"
    assert mail.message["X-Herald-Delivery-Id"] == d["id"]
    with read_scope(herald.engine) as session:
        steps = [(h.status, h.detail or "") for h in history(session, d["id"])]
    assert steps[0][0] == "pending"
    assert steps[1][0] == "pending"
    assert "sendgrid [auth]" in steps[1][1] and "failing over to smtp" in steps[1][1]
    assert steps[2] == ("sent", "")
    # Support staff see which provider each activity used.
    assert await _summaries(herald, n["workflow_id"]) == [
        "step 1: email via sendgrid",
        "step 1: email via smtp",
    ]


async def test_exhausted_attempts_fail_over_to_the_next_provider(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider, smtp: FakeSmtp
) -> None:
    herald = await herald_factory(smtp_url=smtp.url("herald", "p@ss word"))
    sub = await _welcome(herald, retry={**FAST, "maximum_attempts": 2})
    fresh_provider.fail("sendgrid", 503, times=None)

    event = await herald.wait_event((await herald.publish(type="user.signup", to=[sub]))["id"])

    (d,) = event["notifications"][0]["deliveries"]
    assert (d["status"], d["provider"], d["attempts"]) == ("sent", "smtp", 3)
    assert len(fresh_provider.requests("sendgrid")) == 2
    assert len(smtp.messages) == 1


async def test_a_recipients_fault_does_not_fail_over(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider, smtp: FakeSmtp
) -> None:
    """SMTP first: a 550 for the mailbox would fail at SendGrid too, so it is not tried."""
    herald = await herald_factory(
        smtp_url=smtp.url("herald", "p@ss word"), providers={"email": ["smtp", "sendgrid"]}
    )
    sub = await _welcome(herald)
    smtp.fail("rcpt", 550, "5.1.1 no such user")

    event = await herald.wait_event((await herald.publish(type="user.signup", to=[sub]))["id"])

    (d,) = event["notifications"][0]["deliveries"]
    assert (d["status"], d["provider"], d["attempts"]) == ("failed", "smtp", 1)
    assert "no such user" in d["reason"]
    assert fresh_provider.requests("sendgrid") == []


async def test_when_every_provider_fails_the_delivery_fails_with_the_last_reason(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider, smtp: FakeSmtp
) -> None:
    herald = await herald_factory(smtp_url=smtp.url("herald", "wrong password"))
    sub = await _welcome(herald)
    fresh_provider.fail("sendgrid", 403, body=sendgrid_error_body("Forbidden"))

    event = await herald.wait_event((await herald.publish(type="user.signup", to=[sub]))["id"])

    (n,) = event["notifications"]
    (d,) = n["deliveries"]
    assert (n["status"], d["status"]) == ("failed", "failed")
    assert (d["provider"], d["attempts"]) == ("smtp", 2)
    assert "smtp [auth]" in d["reason"]
    assert smtp.messages == []
