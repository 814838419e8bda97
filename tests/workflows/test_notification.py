"""The notification workflow as support staff see it in Temporal."""

from __future__ import annotations

import asyncio

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from dispatching.outbox import dispatch
from dispatching.temporal import TemporalGateway
from tests.conftest import Herald, store_undispatched, unique
from tests.fakes.provider import FakeProvider, sendgrid_error_body, twilio_error_body
from tests.histories import keep_history

EMAIL_STEP = {"channel": "email", "subject": "Hi", "text": "Hello"}
SMS_STEP = {"channel": "sms", "text": "Hello"}


async def visible(client: Client, query: str, expected: int, within: float = 15.0) -> list[str]:
    """Visibility is eventually consistent: poll until the query returns ``expected`` rows."""
    ids: list[str] = []
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        ids = [w.id async for w in client.list_workflows(query)]
        if len(ids) == expected:
            return ids
        await asyncio.sleep(0.2)
    raise AssertionError(f"{query!r}: expected {expected} workflows, saw {ids}")


async def ok_and_bad(herald: Herald) -> tuple[str, str]:
    """Two subscribers of the one-email flow `welcome` (user.signup); ``bounce_bad`` makes
    the next mail to the second one bounce."""
    ok, bad = unique("u"), unique("u")
    await herald.put_subscriber(ok, email="ok@example.com")
    await herald.put_subscriber(bad, email="bad@example.com")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL_STEP])
    return ok, bad


def bounce_bad(provider: FakeProvider) -> None:
    body = sendgrid_error_body("bad@example.com bounced")
    provider.fail("sendgrid", 400, body=body, when="bad@example.com")


async def test_workflows_are_filterable_by_subscriber_and_status(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    ok, bad = await ok_and_bad(herald)
    bounce_bad(fresh_provider)
    accepted = await herald.publish(type="user.signup", to=[ok, bad])
    await herald.wait_event(accepted["id"])

    tenant = f'HeraldTenant="{herald.tenant}"'
    (wf_ok,) = await visible(herald.client, f'{tenant} AND HeraldSubscriber="{ok}"', 1)
    (wf_failed,) = await visible(herald.client, f'{tenant} AND HeraldStatus="failed"', 1)
    assert wf_failed != wf_ok and bad in wf_failed
    await visible(herald.client, f'{tenant} AND HeraldStatus="sent" AND HeraldFlow="welcome"', 1)
    await visible(herald.client, f'{tenant} AND HeraldEventType="user.signup"', 2)

    desc = await herald.client.get_workflow_handle(wf_ok).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    assert await desc.static_summary() == f"user.signup → welcome → {ok} (email)"
    attrs = {p.key.name: p.value for p in desc.typed_search_attributes}
    # No PII: only ids and keys, never the email address.
    assert "ok@example.com" not in repr(attrs)
    await keep_history(herald.client, wf_ok, "notification-plain-send")
    await keep_history(herald.client, wf_failed, "notification-permanent-failure")


async def test_permanent_error_fails_at_once_with_provider_reason(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100")
    await herald.put_flow("otp", event_type="auth.otp", steps=[SMS_STEP])
    fresh_provider.fail("twilio", 400, body=twilio_error_body(21211, "Invalid 'To' Phone Number"))
    event = await herald.wait_event((await herald.publish(type="auth.otp", to=[sub]))["id"])
    (n,) = event["notifications"]
    assert n["status"] == "failed"
    (d,) = n["deliveries"]
    assert d["status"] == "failed"
    assert d["attempts"] == 1
    assert "21211" in d["reason"] and "Invalid 'To' Phone Number" in d["reason"]
    assert len(fresh_provider.requests("twilio")) == 1


async def test_transient_error_is_retried_by_temporal_then_sent(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email="a@example.com")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL_STEP])
    fresh_provider.fail("sendgrid", 503, times=2)
    event = await herald.wait_event((await herald.publish(type="user.signup", to=[sub]))["id"])
    (d,) = event["notifications"][0]["deliveries"]
    assert d["status"] == "sent"
    assert d["attempts"] == 3
    assert d["reason"] is None
    statuses = [r.status for r in fresh_provider.requests("sendgrid")]
    assert statuses == [503, 503, 202]
    workflow_id = event["notifications"][0]["workflow_id"]
    await keep_history(herald.client, workflow_id, "notification-retried")


async def test_repeated_dispatch_of_the_same_event_is_a_no_op(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email="a@example.com")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL_STEP])
    accepted = store_undispatched(herald, "user.signup", sub)
    gateway = TemporalGateway(herald.settings, herald.client)
    await asyncio.gather(*(dispatch(gateway, herald.settings, accepted) for _ in range(3)))
    (planned,) = accepted.notifications
    handle = herald.client.get_workflow_handle(planned.notification.workflow_id)
    await handle.result()
    await dispatch(gateway, herald.settings, accepted)  # after completion too
    assert len(fresh_provider.requests("sendgrid")) == 1
    starts = [
        e
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    ]
    assert len(starts) == 1
    await visible(herald.client, f'WorkflowId="{planned.notification.workflow_id}"', 1)
