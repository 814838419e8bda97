"""A worker stopped mid-send (every deploy stops one) lets the send finish and record."""

from __future__ import annotations

import asyncio

from sqlmodel import Session

from store.models import Delivery
from tests.conftest import HeraldFactory, unique
from tests.fakes.provider import FakeProvider
from tests.workflows.test_notification import EMAIL_STEP
from workflows.runtime import build_workers


async def test_a_send_in_flight_when_its_worker_stops_is_recorded_not_cut_short(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    """The SDK raised CancelledError into the activity's thread on shutdown: the provider
    had the mail, but the delivery stayed pending and the next worker sent it again."""
    herald = await herald_factory(queues=[])
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL_STEP])
    fresh_provider.fail("sendgrid", 202, delay=1.5)  # accepted, one and a half seconds late
    accepted = await herald.publish(type="user.signup", to=[sub])
    (notification,) = (await herald.wait_dispatched(accepted["id"]))["notifications"]
    (delivery_id,) = [d["id"] for d in notification["deliveries"]]

    workers, executor = build_workers(herald.client, herald.settings, herald.engine, ["email"])
    (worker,) = workers
    running = asyncio.create_task(worker.run())
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while fresh_provider.faults_left("sendgrid"):  # until the send is in flight
            assert asyncio.get_running_loop().time() < deadline, "the send never started"
            await asyncio.sleep(0.02)
    finally:  # also when the send never started, or the worker would run on
        await worker.shutdown()
        await running
        executor.shutdown(wait=True)

    with Session(herald.engine) as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        assert (delivery.status, delivery.attempts) == ("sent", 1)
    assert [r.status for r in fresh_provider.requests("sendgrid")] == [202]
