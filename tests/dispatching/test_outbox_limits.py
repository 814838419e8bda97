"""An event Temporal refuses is given up on after N attempts, with the reason, and the
refusal is not taken for an outage."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from core.limits import configure
from dispatching.outbox import Dispatcher
from store.db import session_scope
from store.flows import put_flow
from store.models import utcnow
from store.outbox import pending
from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.provider import FakeProvider


@pytest.fixture(autouse=True)
def _default_limits() -> Iterator[None]:
    yield
    configure(None)


async def attempts_of(herald: Herald, event_id: str, n: int, within: float = 20) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        event: dict[str, Any] = (await herald.http.get(f"/v1/events/{event_id}")).json()
        if event["dispatch_attempts"] >= n:
            return event
        assert asyncio.get_running_loop().time() < deadline, event
        await asyncio.sleep(0.05)


async def test_the_sweep_gives_up_on_an_event_temporal_refuses(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    # Accepted because the limit is raised past what Temporal takes (2 MB per payload).
    herald = await herald_factory(max_workflow_input_bytes=8_000_000, dispatch_max_attempts=2)
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    steps = [{"channel": "email", "subject": "big", "text": "x" * 2_200_000}]
    with session_scope(herald.engine) as session:  # over any request body limit: stored directly
        put_flow(session, herald.tenant, "huge", {"event_type": "huge.thing", "steps": steps})
    await herald.put_flow(
        "fine", event_type="fine.thing", steps=[{"channel": "email", "subject": "s", "text": "t"}]
    )

    refused = await herald.publish(type="huge.thing", to=[sub])
    event = await attempts_of(herald, refused["id"], 1)  # the request path's hand-over
    assert "Blob data size exceeds limit" in event["dispatch_error"]
    assert event["dispatched_at"] is None and event["dispatch_given_up_at"] is None

    # Temporal answered: it is not down, so other events still go out at once.
    fine = await herald.publish(type="fine.thing", to=[sub])
    assert (await herald.wait_event(fine["id"]))["notifications"][0]["status"] == "sent"

    dispatcher: Dispatcher = herald.app.state.dispatcher
    await dispatcher.sweep_once(grace=timedelta(0))
    await asyncio.wait_for(dispatcher.queue.join(), 20)
    event = await attempts_of(herald, refused["id"], 2)
    assert event["dispatch_given_up_at"] is not None
    assert event["dispatched_at"] is None
    assert event["notifications"][0]["status"] == "pending"

    # Given up: the sweep leaves it alone from now on.
    left = pending(herald.engine, received_before=utcnow() + timedelta(seconds=1), limit=10_000)
    assert refused["id"] not in {a.event.id for a in left}
    await dispatcher.sweep_once(grace=timedelta(0))
    await asyncio.wait_for(dispatcher.queue.join(), 20)
    again = (await herald.http.get(f"/v1/events/{refused['id']}")).json()
    assert again["dispatch_attempts"] == 2
