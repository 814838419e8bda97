"""Workflow starts give way to a burst of accepts, for a bounded time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import REGISTRY
from temporalio.service import RPCError, RPCStatusCode

from dispatching import give_way
from dispatching.give_way import GiveWay
from dispatching.outbox import Dispatcher
from dispatching.temporal import TemporalGateway
from store.events import AcceptedEvent
from tests.conftest import Herald, store_undispatched, unique
from tests.fakes.provider import FakeProvider

EMAIL_STEP = {"channel": "email", "subject": "Hi", "text": "Hello"}


async def waits(gate: GiveWay, queued_at: float | None = None, within: float = 0.3) -> bool:
    """Whether ``gate.wait`` is still waiting after ``within`` seconds."""
    task = asyncio.create_task(gate.wait(time.monotonic() if queued_at is None else queued_at))
    await asyncio.sleep(within)
    still = not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return still


async def test_a_start_waits_only_while_a_burst_is_in_flight() -> None:
    gate = GiveWay(at=2, max_hold=30)
    with gate.accepting():
        assert not await waits(gate)  # one accept in flight is no burst
        with gate.accepting():
            assert await waits(gate)
    task = asyncio.create_task(gate.wait(time.monotonic()))
    await asyncio.wait_for(task, 2)  # over: none in flight, so after IDLE


async def test_a_momentary_dip_does_not_end_the_burst() -> None:
    gate = GiveWay(at=2, max_hold=30)
    first = gate.accepting()
    first.__enter__()
    with gate.accepting():
        pass  # the group commit answered: the count dips under `at` ...
    with gate.accepting():  # ... and the next request arrives before QUIET is up
        await asyncio.sleep(give_way.QUIET * 1.5)
        assert await waits(gate)
    first.__exit__(None, None, None)


async def test_nothing_in_flight_ends_the_burst_sooner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(give_way, "QUIET", 60)
    gate = GiveWay(at=2, max_hold=120)
    first = gate.accepting()
    first.__enter__()
    with gate.accepting():
        pass
    assert await waits(gate)  # one still in flight: QUIET applies
    first.__exit__(None, None, None)
    await asyncio.wait_for(gate.wait(time.monotonic()), 2)  # none: IDLE


async def test_the_hold_is_bounded_from_when_the_event_was_queued() -> None:
    gate = GiveWay(at=1, max_hold=0.5)
    with gate.accepting():
        assert not await waits(gate, queued_at=time.monotonic() - 0.5, within=0.05)
        started = time.monotonic()
        await asyncio.wait_for(gate.wait(started), 5)  # the burst goes on; the start does not wait
        assert time.monotonic() - started >= 0.45


async def test_at_zero_never_holds() -> None:
    gate = GiveWay(at=0, max_hold=30)
    with gate.accepting(), gate.accepting():
        assert not await waits(gate, within=0.05)


async def workflow_exists(herald: Herald, workflow_id: str) -> bool:
    try:
        await herald.client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


def held_seconds() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("herald_outbox_held_seconds_count") or 0.0
    return count, REGISTRY.get_sample_value("herald_outbox_held_seconds_sum") or 0.0


@contextlib.asynccontextmanager
async def one_event(
    herald: Herald, max_hold: float
) -> AsyncIterator[tuple[Dispatcher, AcceptedEvent]]:
    """An accepted event, not yet dispatched, and a dispatcher whose starts give way at 1."""
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL_STEP])
    settings = herald.settings.model_copy(
        update={"dispatch_give_way_at": 1, "dispatch_max_hold_seconds": max_hold}
    )
    dispatcher = Dispatcher(herald.engine, TemporalGateway(settings, herald.client), settings)
    await dispatcher.start()
    try:
        yield dispatcher, store_undispatched(herald, "user.signup", sub)
    finally:
        await dispatcher.stop()


async def test_the_dispatcher_starts_once_the_burst_is_over(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    held = held_seconds()
    async with one_event(herald, max_hold=60) as (dispatcher, accepted):
        with dispatcher.give_way.accepting():
            dispatcher.submit(accepted)
            await asyncio.sleep(1)
            workflow_id = accepted.notifications[0].notification.workflow_id
            assert not await workflow_exists(herald, workflow_id)
        event = await herald.wait_event(accepted.event.id)
    assert event["notifications"][0]["status"] == "sent"
    count, total = held_seconds()
    assert count == held[0] + 1  # /metrics shows operators the starts that waited
    assert total - held[1] >= 0.9


async def test_a_start_waits_no_longer_than_the_hold(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    async with one_event(herald, max_hold=0.5) as (dispatcher, accepted):
        with dispatcher.give_way.accepting():  # the burst outlasts the hold
            dispatcher.submit(accepted)
            event = await herald.wait_event(accepted.event.id)
            assert dispatcher.give_way.in_flight == 1
    assert event["notifications"][0]["status"] == "sent"


class Counting(GiveWay):
    """Records how many accepts the API had in flight at once."""

    most = 0

    @contextlib.contextmanager
    def accepting(self) -> Iterator[None]:
        with super().accepting():
            self.most = max(self.most, self.in_flight)
            yield


async def test_the_api_counts_its_accepts(herald: Herald) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL_STEP])
    dispatcher: Dispatcher = herald.app.state.dispatcher
    counting = Counting(at=0, max_hold=0)
    dispatcher.give_way = counting
    await asyncio.gather(*(herald.publish(type="user.signup", to=[sub]) for _ in range(4)))
    assert counting.most >= 1
    assert counting.in_flight == 0
