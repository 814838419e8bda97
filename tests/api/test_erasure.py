"""DELETE /v1/subscribers/{id}: personal data goes, running notifications stop, counts stay."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import col
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.policies import ORPHANED
from dispatching.erasure import ERASED
from store.db import read_scope, session_scope
from store.engagement import Suppression, suppress
from store.erasure import find_erasures, subscriber_hash
from store.models import (
    Delivery,
    DeliveryEvent,
    DigestClaim,
    Event,
    Notification,
    Preference,
    SandboxMessage,
    Subscriber,
    utcnow,
)
from store.topics import TopicSubscriber
from tests.conftest import Herald, open_api, unique

EMAIL = {"channel": "email", "subject": "Hi {{ subscriber.name }}", "text": "Hello"}


async def test_erasure_deletes_personal_data_and_stops_notifications(
    sandbox_herald: Herald,
) -> None:
    herald = sandbox_herald
    ada, bob = unique("ada"), unique("bob")
    await herald.put_subscriber(
        ada, email=f"{ada}@example.com", phone="+14155550100", push_tokens=["t1", "t2"], name="Ada"
    )
    await herald.put_subscriber(bob, email=f"{bob}@example.com", name="Bob")
    r = await herald.http.put(
        f"/v1/subscribers/{ada}/preferences", json={"channels": {"sms": False}}
    )
    assert r.status_code == 200, r.text
    topic = unique("topic")
    assert (await herald.http.put(f"/v1/topics/{topic}", json={"name": "Beta"})).status_code == 200
    r = await herald.http.post(f"/v1/topics/{topic}/subscribers", json={"subscribers": [ada, bob]})
    assert r.status_code == 200, r.text
    now_type, later_type, digest_type = unique("t.now"), unique("t.later"), unique("t.digest")
    await herald.put_flow("now", event_type=now_type, steps=[EMAIL])
    await herald.put_flow(
        "later", event_type=later_type, steps=[{"type": "delay", "duration": "PT1H"}, EMAIL]
    )
    await herald.put_flow(
        "digest", event_type=digest_type, steps=[{"type": "digest", "window": "PT1H"}, EMAIL]
    )

    # Sent before the erasure: one event to both (to the sandbox), counted in the rollups.
    shared = await herald.wait_event((await herald.publish(type=now_type, to=[ada, bob]))["id"])
    assert {d["status"] for n in shared["notifications"] for d in n["deliveries"]} == {"sent"}
    # Pending: a delayed notification, an open digest window, an event no flow matched.
    later = await herald.wait_dispatched((await herald.publish(type=later_type, to=[ada]))["id"])
    digest = await herald.wait_dispatched((await herald.publish(type=digest_type, to=[ada]))["id"])
    unmatched = (await herald.publish(type=unique("t.none"), to=[ada]))["id"]
    [later_wf] = [n["workflow_id"] for n in later["notifications"]]
    digest_wf = await _running_digest(herald.client, herald.tenant, ada)
    ada_deliveries = _delivery_ids(shared, ada) + _delivery_ids(later, ada)
    ada_deliveries += _delivery_ids(digest, ada)
    bob_deliveries = _delivery_ids(shared, bob)
    with session_scope(herald.engine) as s:  # a hard bounce; a digest claim (hand-made)
        suppress(s, herald.tenant, "email", f"{ada}@example.com", "bounce", ada_deliveries[0])
        [ada_now] = [n["id"] for n in shared["notifications"] if n["subscriber_id"] == ada]
        s.add(DigestClaim(notification_id=ada_now, claim_id=unique("claim")))
    window = {"since": (utcnow() - timedelta(days=1)).isoformat(), "group_by": "channel"}
    window["until"] = (utcnow() + timedelta(hours=2)).isoformat()
    before = (await herald.http.get("/v1/analytics", params=window)).json()
    assert before["totals"]["sent"] == 2
    assert _sandbox_rows(herald, ada_deliveries) == 1

    r = await herald.http.delete(f"/v1/subscribers/{ada}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["deleted"] == {
        "subscriber": 1,
        "push_tokens": 2,
        "preferences": 1,
        "topic_memberships": 1,
        "notifications": 3,
        "deliveries": 3,
        "delivery_events": body["deleted"]["delivery_events"],
        "tracked_links": 0,
        "sandbox_messages": 1,
        "suppressions": 1,
        "digest_claims": 1,
        "events": 3,  # the delayed, the digested and the unmatched one were Ada's alone
        "event_recipients": 1,  # the shared one keeps Bob
    }
    assert body["deleted"]["delivery_events"] >= 1
    assert body["workflows_stopped"] == 2 and body["workflows_not_reached"] == 0

    # The running notification and the digest window are terminated: nothing more is sent.
    for wf in (later_wf, digest_wf):
        handle = herald.client.get_workflow_handle(wf)
        description = await handle.describe()
        assert description.status == WorkflowExecutionStatus.TERMINATED
    history = await herald.client.get_workflow_handle(later_wf).fetch_history()
    terminated = [
        e for e in history.events if e.HasField("workflow_execution_terminated_event_attributes")
    ]
    assert terminated[0].workflow_execution_terminated_event_attributes.reason == ERASED
    assert not [e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")]

    with read_scope(herald.engine) as s:
        t = herald.tenant
        assert s.get(Subscriber, (t, ada)) is None
        assert s.get(Preference, (t, ada)) is None
        assert _count(s, TopicSubscriber, col(TopicSubscriber.subscriber_id) == ada) == 0
        assert _count(s, Notification, col(Notification.subscriber_id) == ada) == 0
        assert _count(s, Delivery, col(Delivery.id).in_(ada_deliveries)) == 0
        assert _count(s, DeliveryEvent, col(DeliveryEvent.delivery_id).in_(ada_deliveries)) == 0
        assert _count(s, SandboxMessage, col(SandboxMessage.delivery_id).in_(ada_deliveries)) == 0
        assert _count(s, Suppression, col(Suppression.tenant_id) == t) == 0
        assert _count(s, DigestClaim, col(DigestClaim.notification_id) == ada_now) == 0
        for gone in (later["id"], digest["id"], unmatched):
            assert s.get(Event, gone) is None
        shared_row = s.get(Event, shared["id"])
        assert shared_row is not None and shared_row.recipients == [bob]
        # Bob is untouched: his row, his membership, his delivery and its sandbox copy.
        assert s.get(Subscriber, (t, bob)) is not None
        assert _count(s, TopicSubscriber, col(TopicSubscriber.subscriber_id) == bob) == 1
        assert _count(s, Delivery, col(Delivery.id).in_(bob_deliveries)) == 1
        assert _count(s, SandboxMessage, col(SandboxMessage.delivery_id).in_(bob_deliveries)) == 1
        [audit] = find_erasures(s, t, ada)
    assert audit.id == body["id"] and audit.deleted == body["deleted"]
    assert audit.subscriber_hash == subscriber_hash(t, ada) and audit.api_key_id is not None
    assert audit.open_workflows >= 1
    assert ada not in json.dumps(audit.model_dump(mode="json"))  # the id is kept only hashed

    # The analytics rollups still count what was sent before the erasure.
    assert (await herald.http.get("/v1/analytics", params=window)).json() == before
    # Idempotent: Herald holds nothing more for the id.
    assert (await herald.http.delete(f"/v1/subscribers/{ada}")).status_code == 404
    assert (await herald.http.get(f"/v1/subscribers/{ada}")).status_code == 404
    assert (await herald.http.delete(f"/v1/subscribers/{unique('nobody')}")).status_code == 404
    r = await herald.http.get(f"/v1/topics/{topic}")
    assert r.json()["subscriber_count"] == 1
    with read_scope(herald.engine) as s:
        assert len(find_erasures(s, herald.tenant, ada)) == 1


async def test_erasure_while_temporal_is_down_leaves_workflows_to_end_as_orphaned(
    sandbox_herald: Herald,
) -> None:
    """The data goes anyway; the notification then finds its rows gone and ends, once."""
    herald = sandbox_herald
    ada = unique("ada")
    await herald.put_subscriber(ada, email=f"{ada}@example.com", name="Ada")
    event_type = unique("t.soon")
    await herald.put_flow(
        "soon", event_type=event_type, steps=[{"type": "delay", "duration": "PT3S"}, EMAIL]
    )
    event = await herald.wait_dispatched((await herald.publish(type=event_type, to=[ada]))["id"])
    [wf] = [n["workflow_id"] for n in event["notifications"]]
    deliveries = _delivery_ids(event, ada)
    cut_off = herald.settings.model_copy(
        update={"temporal_address": "127.0.0.1:1", "temporal_connect_timeout_seconds": 0.5}
    )
    async with AsyncExitStack() as stack:
        _, http = await open_api(stack, cut_off, herald.api_key, None)
        r = await http.delete(f"/v1/subscribers/{ada}")
    assert r.status_code == 200, r.text
    assert r.json()["workflows_stopped"] == 0 and r.json()["workflows_not_reached"] == 1
    assert r.json()["deleted"]["notifications"] == 1

    handle = herald.client.get_workflow_handle(wf)
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), 30)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == ORPHANED
    assert "does not exist" in cause.message
    history = await handle.fetch_history()
    scheduled = [
        e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert len(scheduled) == 1  # one send attempt found the rows gone; no retry loop
    assert _sandbox_rows(herald, deliveries) == 0  # nothing was sent


async def test_erasure_keeps_a_suppressed_address_another_subscriber_shares(
    sandbox_herald: Herald,
) -> None:
    herald = sandbox_herald
    ada, twin = unique("ada"), unique("twin")
    shared = f"{unique('family')}@example.com"
    await herald.put_subscriber(ada, email=shared)
    await herald.put_subscriber(twin, email=shared.upper())
    with session_scope(herald.engine) as s:
        suppress(s, herald.tenant, "email", shared, "hard bounce", "dlv_x")
    r = await herald.http.delete(f"/v1/subscribers/{ada}")
    assert r.status_code == 200, r.text
    assert r.json()["deleted"]["suppressions"] == 0
    with read_scope(herald.engine) as s:
        assert s.get(Suppression, (herald.tenant, "email", shared)) is not None


async def _running_digest(client: Client, tenant: str, subscriber: str) -> str:
    """The digest workflow, once Temporal's visibility lists it (the erasure finds it there)."""
    query = f'HeraldTenant = "{tenant}" AND HeraldSubscriber = "{subscriber}"'
    query += ' AND ExecutionStatus = "Running"'
    for _ in range(100):
        ids = [w.id async for w in client.list_workflows(query) if w.id.startswith("digest/")]
        if ids:
            return ids[0]
        await asyncio.sleep(0.1)
    raise AssertionError("the digest workflow never showed in visibility")


def _delivery_ids(event: dict[str, Any], subscriber: str) -> list[str]:
    return [
        d["id"]
        for n in event["notifications"]
        if n["subscriber_id"] == subscriber
        for d in n["deliveries"]
    ]


def _sandbox_rows(herald: Herald, delivery_ids: list[str]) -> int:
    with read_scope(herald.engine) as s:
        return _count(s, SandboxMessage, col(SandboxMessage.delivery_id).in_(delivery_ids))


def _count(session: Any, model: Any, *where: Any) -> int:
    return int(session.execute(select(func.count()).select_from(model).where(*where)).scalar_one())
