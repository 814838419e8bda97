"""Dead letters: failed notifications wait for a person to retry them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import WorkflowExecutionStatus

from tests.conftest import Herald, HeraldFactory, unique, venv_binary
from tests.fakes.provider import FakeProvider
from tests.histories import keep_history
from tests.workflows.test_notification import visible

FAST = {"initial_interval": "PT0.1S", "backoff_coefficient": 1, "maximum_attempts": 2}
EMAIL = {"channel": "email", "subject": "Hi", "text": "x", "retry": FAST}
SMS = {"channel": "sms", "text": "x", "retry": FAST}


async def dead_letters(herald: Herald, wanted: int, **query: str) -> list[dict[str, Any]]:
    for _ in range(200):
        rows: list[dict[str, Any]] = (await herald.http.get("/v1/deliveries", params=query)).json()
        if len(rows) >= wanted:
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {wanted} dead letters for {query}")


async def test_exhausted_delivery_waits_and_is_sent_after_a_cli_retry_signal(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(dead_letter_retention=600)
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL])
    fresh_provider.fail("sendgrid", 503, times=None)
    accepted = await herald.publish(type="user.signup", to=[sub])
    workflow_id = accepted["notifications"][0]["workflow_id"]

    (row,) = await dead_letters(herald, 1, channel="email")
    assert (row["status"], row["attempts"], row["workflow_id"]) == ("failed", 2, workflow_id)
    assert "503" in row["reason"]
    handle = herald.client.get_workflow_handle(workflow_id)
    # The row turns failed a moment before the workflow upserts HeraldStatus: wait for it.
    await visible(herald.client, f'WorkflowId="{workflow_id}" AND HeraldStatus="failed"', 1)
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    fresh_provider.clear_faults()
    # Exactly what the Temporal UI's "Send Signal" dialog does.
    temporal = venv_binary("temporal")
    assert temporal
    proc = await asyncio.create_subprocess_exec(
        temporal,
        "workflow",
        "signal",
        "--address",
        herald.settings.temporal_target,
        "--workflow-id",
        workflow_id,
        "--name",
        "retry",
        "--input",
        '{"channel": "email"}',
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()
    result = await asyncio.wait_for(handle.result(), 20)
    assert result["status"] == "sent"
    event = (await herald.http.get(f"/v1/events/{accepted['id']}")).json()
    (d,) = event["notifications"][0]["deliveries"]
    assert d["status"] == "sent"
    assert [r.status for r in fresh_provider.requests("sendgrid")] == [503, 503, 202]
    assert (await herald.http.get("/v1/deliveries")).json() == []
    await keep_history(herald.client, workflow_id, "notification-dead-letter-retry")


async def test_api_retry_resends_only_the_failed_channel(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(dead_letter_retention=600)
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com", phone="+14155550100")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL, SMS])
    fresh_provider.fail("twilio", 500, times=None)
    accepted = await herald.publish(type="user.signup", to=[sub])
    notification_id = accepted["notifications"][0]["id"]
    await dead_letters(herald, 1, channel="sms")

    other = await herald_factory()
    foreign = await herald.http.post(
        f"/v1/notifications/{notification_id}/retry",
        headers={"Authorization": f"Bearer {other.api_key}"},
    )
    assert foreign.status_code == 404

    fresh_provider.clear_faults()
    r = await herald.http.post(f"/v1/notifications/{notification_id}/retry")
    assert r.status_code == 202, r.text
    event = await herald.wait_event(accepted["id"])
    statuses = {d["channel"]: d["status"] for d in event["notifications"][0]["deliveries"]}
    assert statuses == {"email": "sent", "sms": "sent"}
    assert len([x for x in fresh_provider.requests("sendgrid") if x.status == 202]) == 1
    # Closed now: a second retry has nothing to act on.
    again = await herald.http.post(f"/v1/notifications/{notification_id}/retry")
    assert again.status_code == 409


async def test_bulk_retry_by_filter(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(dead_letter_retention=600)
    subs = [unique("u") for _ in range(3)]
    for sid in subs:
        await herald.put_subscriber(sid, phone="+14155550100")
    await herald.put_flow("otp", event_type="auth.otp", steps=[SMS])
    fresh_provider.fail("twilio", 500, times=None)
    accepted = [await herald.publish(type="auth.otp", to=[sid]) for sid in subs]
    await dead_letters(herald, 3, flow="otp")
    fresh_provider.clear_faults()
    r = await herald.http.post("/v1/deliveries/retry", json={"channel": "sms", "flow": "otp"})
    assert r.status_code == 202
    assert len(r.json()["notifications"]) == 3
    for a in accepted:
        event = await herald.wait_event(a["id"])
        assert event["notifications"][0]["status"] == "sent"


async def test_dead_letter_closes_as_failed_when_retention_passes(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(dead_letter_retention=1)
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100")
    await herald.put_flow("otp", event_type="auth.otp", steps=[SMS])
    fresh_provider.fail("twilio", 500, times=None)
    accepted = await herald.publish(type="auth.otp", to=[sub])
    event = await herald.wait_event(accepted["id"], within=30)
    assert event["notifications"][0]["status"] == "failed"
    assert event["notifications"][0]["deliveries"][0]["status"] == "failed"


async def test_a_retry_during_quiet_hours_is_scheduled_not_lost(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    """The retried send meets quiet hours: it waits for them like a first send would."""
    herald = await herald_factory(dead_letter_retention=600)
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100")
    await herald.put_flow("otp", event_type="auth.otp", steps=[SMS])
    fresh_provider.fail("twilio", 500, times=2)
    accepted = await herald.publish(type="auth.otp", to=[sub])
    (row,) = await dead_letters(herald, 1, channel="sms")

    now = datetime.now(UTC)
    quiet = {
        "start": f"{now - timedelta(hours=1):%H:%M}",
        "end": f"{now + timedelta(hours=2):%H:%M}",
    }
    r = await herald.http.put(f"/v1/subscribers/{sub}/preferences", json={"quiet_hours": quiet})
    assert r.status_code == 200, r.text
    r = await herald.http.post(f"/v1/notifications/{row['notification_id']}/retry")
    assert r.status_code == 202, r.text

    for _ in range(100):
        event = (await herald.http.get(f"/v1/events/{accepted['id']}")).json()
        (d,) = event["notifications"][0]["deliveries"]
        if d["status"] == "scheduled":
            break
        await asyncio.sleep(0.1)
    assert d["status"] == "scheduled" and d["reason"].startswith("quiet hours until"), d
    assert event["notifications"][0]["status"] == "running"
    handle = herald.client.get_workflow_handle(row["workflow_id"])
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    assert [r.status for r in fresh_provider.requests("twilio")] == [500, 500]
    await handle.terminate("test over")
