"""A notification whose rows are gone (database reset, erased subscriber) ends at once.

Its workflow fails with an ``Orphaned`` ApplicationError naming the missing row, after one
attempt, instead of retrying the bookkeeping forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import delete
from sqlmodel import col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from store.db import session_scope
from store.models import Delivery, DeliveryEvent, Notification
from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.provider import FakeProvider
from tests.histories import keep_history
from workflows.runtime import WORKFLOWS_QUEUE

EMAIL = {"channel": "email", "subject": "Hi", "text": "x"}
DELAY = {"type": "delay", "until": "{{ data.at }}"}


def erase_rows(herald: Herald, workflow_id: str) -> None:
    """Delete the notification and its deliveries, as a database reset would lose them."""
    with session_scope(herald.engine) as s:
        (nid,) = s.exec(select(Notification.id).where(Notification.workflow_id == workflow_id))
        ids = list(s.exec(select(Delivery.id).where(Delivery.notification_id == nid)))
        s.execute(delete(DeliveryEvent).where(col(DeliveryEvent.delivery_id).in_(ids)))
        s.execute(delete(Delivery).where(col(Delivery.notification_id) == nid))
        s.execute(delete(Notification).where(col(Notification.id) == nid))


@pytest.mark.parametrize(
    ("steps", "missing"),
    [([EMAIL], "delivery"), ([DELAY, EMAIL], "notification")],
    ids=["send", "delay"],
)
async def test_workflow_of_erased_rows_fails_once_as_orphaned(
    herald_factory: HeraldFactory,
    fresh_provider: FakeProvider,
    steps: list[dict[str, Any]],
    missing: str,
) -> None:
    # No worker yet: the rows are erased before the workflow's first task runs (a flow
    # of email alone runs on the email queue; see dispatching.outbox.notification_queue).
    herald = await herald_factory(queues=[])
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    await herald.put_flow("welcome", event_type="user.signup", steps=steps)
    accepted = await herald.publish(
        type="user.signup", to=[sub], data={"at": "2099-01-01T00:00:00Z"}
    )
    await herald.wait_dispatched(accepted["id"])
    workflow_id = accepted["notifications"][0]["workflow_id"]
    erase_rows(herald, workflow_id)

    await herald.serve([WORKFLOWS_QUEUE, "email"])
    handle = herald.client.get_workflow_handle(workflow_id)
    with pytest.raises(WorkflowFailureError) as info:
        await asyncio.wait_for(handle.result(), 20)

    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "Orphaned" and cause.non_retryable
    assert "orphaned" in cause.message and f"{missing} " in cause.message
    assert "does not exist" in cause.message
    events = [e async for e in handle.fetch_history_events()]
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert attempts == ([1] if missing == "delivery" else [])  # deliver ran once, not again
    markers = [
        e.marker_recorded_event_attributes.marker_name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    # The patch marker, and for the delay the failed resolve_delay: no record_failure, no stop.
    assert markers == (
        ["core_patch"] if missing == "delivery" else ["core_local_activity", "core_patch"]
    )
    assert fresh_provider.requests("sendgrid") == []
    # The patched path's own history, replayed beside the ones recorded before the patch.
    await keep_history(herald.client, workflow_id, f"notification-orphaned-{missing}")
