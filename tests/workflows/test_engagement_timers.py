"""Flows that react to engagement, on the time-skipping server: a day's wait in a blink.

Email, then `wait P1D until opened`, then SMS `unless opened`: both branches, and the
case where the signal is lost and only the stored status can prevent a wrong send.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from core.lifecycle import Kind, Observation, Source
from store.lifecycle import record_batch
from tests.conftest import Herald, unique
from tests.fakes.provider import FakeProvider
from tests.workflows.test_timers import _finish, _statuses, _timers, _until


@pytest.fixture
def herald(skipping_herald: Herald) -> Herald:
    return skipping_herald


async def _opened_or_sms(herald: Herald, wait: str = "P1D") -> str:
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com", phone="+14155550100")
    await herald.put_flow(
        "nudge",
        event_type="invoice.issued",
        steps=[
            {"channel": "email", "subject": "Your invoice", "text": "Please pay"},
            {"type": "wait", "duration": wait, "until": "opened"},
            {"channel": "sms", "text": "Your invoice is waiting", "unless": "opened"},
        ],
    )
    return sub


async def test_sms_goes_out_when_the_email_is_not_opened_within_a_day(
    herald: Herald, fresh_provider: FakeProvider, skipping_env: WorkflowEnvironment
) -> None:
    sub = await _opened_or_sms(herald)
    published = await herald.publish(type="invoice.issued", to=[sub])

    event = await _finish(herald, skipping_env, published["id"], timedelta(days=1, minutes=1))

    (n,) = event["notifications"]
    assert _statuses(n) == ["sent", "sent"]
    assert len(fresh_provider.requests("twilio")) == 1
    assert await _timers(herald, n["workflow_id"]) == [timedelta(days=1)]
    view = await herald.client.get_workflow_handle(n["workflow_id"]).query("status")
    assert [s["state"] for s in view["steps"]] == ["sent", "done", "sent"]
    assert view["steps"][1]["detail"] == "timed out"


async def test_an_open_ends_the_wait_and_skips_the_sms(
    herald: Herald, fresh_provider: FakeProvider, skipping_env: WorkflowEnvironment
) -> None:
    sub = await _opened_or_sms(herald)
    published = await herald.publish(type="invoice.issued", to=[sub])
    event = await _until(herald, published["id"], lambda n: _statuses(n)[0] == "sent")
    (n,) = event["notifications"]
    email = n["deliveries"][0]["id"]

    opened = await herald.http.post(f"/v1/deliveries/{email}/opened")
    assert opened.status_code == 202, opened.text
    assert opened.json()["status"] == "opened"
    # No server time passes: the engagement signal ends the day-long wait at once.
    handle = herald.client.get_workflow_handle(n["workflow_id"])
    await asyncio.wait_for(handle.result(), 10)

    event = (await herald.http.get(f"/v1/events/{published['id']}")).json()
    (n,) = event["notifications"]
    assert _statuses(n) == ["opened", "skipped"]
    assert n["deliveries"][1]["reason"] == "an earlier send was opened"
    assert fresh_provider.requests("twilio") == []
    view = await handle.query("status")
    assert view["engaged"] == ["delivered", "opened"]
    assert view["steps"][1]["detail"] == "opened"


async def test_a_lost_signal_still_skips_the_sms_from_the_stored_status(
    herald: Herald, fresh_provider: FakeProvider, skipping_env: WorkflowEnvironment
) -> None:
    sub = await _opened_or_sms(herald, wait="PT1H")
    published = await herald.publish(type="invoice.issued", to=[sub])
    event = await _until(herald, published["id"], lambda n: _statuses(n)[0] == "sent")
    email = event["notifications"][0]["deliveries"][0]["id"]
    # Recorded straight in the store, as if the API crashed before signalling.
    await asyncio.to_thread(
        record_batch, herald.engine, [Observation(Kind.OPENED, Source.PIXEL, email)]
    )

    event = await _finish(herald, skipping_env, published["id"], timedelta(hours=1, minutes=1))

    (n,) = event["notifications"]
    assert _statuses(n) == ["opened", "skipped"]
    assert n["deliveries"][1]["reason"] == "an earlier send was opened"
    assert fresh_provider.requests("twilio") == []
    # The workflow never heard of the open: the wait ran its full hour.
    view = await herald.client.get_workflow_handle(n["workflow_id"]).query("status")
    assert view["engaged"] == []
    assert view["steps"][1]["detail"] == "timed out"
