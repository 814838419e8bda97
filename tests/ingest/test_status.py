"""The status stream on the real RabbitMQ and NATS JetStream: one message per committed change.

Changes are made through the store's own transitions and reports (as the send path and
the provider callbacks make them); the publisher reads them from the delivery history.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import nats
import pytest
from faststream.nats import NatsBroker
from faststream.rabbit import RabbitBroker
from sqlalchemy.engine import Engine

from core.lifecycle import Kind, Observation, Source
from core.types import DeliveryStatus
from ingest.names import Names
from ingest.status import StatusPublisher, declare, nats_sender, rabbit_sender, stream_name
from store.db import session_scope
from store.deliveries import transition
from store.lifecycle import record_batch
from store.models import Delivery
from store.status_stream import StatusChange, position, save_position
from tests.conftest import Herald, unique
from tests.ingest.conftest import NATS_URL, RABBITMQ_URL, Consumers, Rabbit
from tests.store.test_lifecycle import _delivery


class Stream:
    """A consumer's queue bound to every status of the test's exchange."""

    def __init__(self, queue: aio_pika.abc.AbstractQueue) -> None:
        self.queue = queue

    async def take(
        self, count: int, within: float = 10.0
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        got: list[aio_pika.abc.AbstractIncomingMessage] = []
        deadline = asyncio.get_running_loop().time() + within
        while len(got) < count:
            assert asyncio.get_running_loop().time() < deadline, f"{len(got)} of {count}"
            message = await self.queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
            else:
                got.append(message)
        return got


@pytest.fixture
async def rabbit_stream() -> AsyncIterator[tuple[RabbitBroker, Names, Stream]]:
    names = Names(unique("st"))
    broker = RabbitBroker(RABBITMQ_URL)
    await broker.connect()
    await declare(broker, names)
    connection = await aio_pika.connect(RABBITMQ_URL)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(names.status_exchange, routing_key="#")
    try:
        yield broker, names, Stream(queue)
    finally:
        await channel.exchange_delete(names.status_exchange)
        await connection.close()
        await broker.stop()


def _sent(engine: Engine, channel: str = "email") -> Delivery:
    d = _delivery(engine, channel=channel)
    with session_scope(engine) as s:
        transition(s, d.id, DeliveryStatus.SENT, provider="sendgrid", provider_message_id="m1")
    return d


def _bodies(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in messages]


async def test_sent_delivered_and_failed_are_published_with_their_routing_keys(
    engine: Engine, rabbit_stream: tuple[RabbitBroker, Names, Stream]
) -> None:
    broker, names, stream = rabbit_stream
    publisher = StatusPublisher(engine, rabbit_sender(broker, names), name=unique("status"))
    assert await publisher.step() == 0  # a new stream starts now, not with the past

    delivered = _sent(engine)
    record_batch(engine, [Observation(Kind.DELIVERED, Source.SENDGRID, delivered.id)])
    failed = _delivery(engine, channel="sms")
    with session_scope(engine) as s:
        transition(s, failed.id, DeliveryStatus.FAILED, detail="21211: not a phone number")
    await publisher.step()

    messages = await stream.take(3)
    bodies = _bodies(messages)
    assert [(m.routing_key, b["status"]) for m, b in zip(messages, bodies, strict=True)] == [
        (f"{delivered.tenant_id}.email.sent", "sent"),
        (f"{delivered.tenant_id}.email.delivered", "delivered"),
        (f"{failed.tenant_id}.sms.failed", "failed"),
    ]
    assert bodies[0]["delivery_id"] == delivered.id
    assert (bodies[0]["provider"], bodies[1]["provider"]) == ("sendgrid", "sendgrid")
    assert bodies[2]["reason"] == "21211: not a phone number"
    assert all(m.message_id == b["id"] for m, b in zip(messages, bodies, strict=True))
    assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in messages)
    assert await publisher.step() == 0  # nothing new: nothing published again
    assert await stream.queue.get(no_ack=True, fail=False) is None


async def test_a_publisher_that_dies_mid_batch_is_followed_and_each_change_arrives(
    engine: Engine, rabbit_stream: tuple[RabbitBroker, Names, Stream]
) -> None:
    broker, names, stream = rabbit_stream
    name = unique("status")
    send = rabbit_sender(broker, names)
    sent_by_first: list[StatusChange] = []

    async def dies_after_five(change: StatusChange) -> None:
        if len(sent_by_first) == 5:
            raise ConnectionError("killed")  # the process dies before saving its position
        sent_by_first.append(change)
        await send(change)

    first = StatusPublisher(engine, dies_after_five, name=name, lease=1.0)
    await first.step()
    deliveries = [_sent(engine) for _ in range(12)]
    with pytest.raises(ConnectionError):
        await first.step()
    # Another process takes the stream over once the dead one's lease has run out.
    second = StatusPublisher(engine, send, name=name, lease=1.0)
    assert await second.step() == 0  # still leased to the first
    await asyncio.sleep(1.1)
    assert await second.step() == 12

    bodies = _bodies(await stream.take(12 + len(sent_by_first)))
    ids = [b["id"] for b in bodies]
    assert {b["delivery_id"] for b in bodies} == {d.id for d in deliveries}
    assert len(set(ids)) == 12  # one per change, by id
    # The repeats are exactly what the dead publisher sent before it saved its position.
    repeats = [i for i in set(ids) if ids.count(i) > 1]
    assert sorted(repeats) == sorted(c.message_id for c in sent_by_first)


async def test_nats_jetstream_gets_each_change_once_under_its_subject(engine: Engine) -> None:
    names = Names(unique("st"))
    broker = NatsBroker(NATS_URL)
    await broker.connect()
    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    try:
        await declare(broker, names)
        publisher = StatusPublisher(engine, nats_sender(broker, names), name=unique("status"))
        await publisher.step()
        assert publisher.mark is not None
        before = publisher.mark.position
        d = _sent(engine, channel="push")
        await publisher.step()
        # The same change published again (a crash before the position was saved):
        # JetStream keeps one, by its Nats-Msg-Id.
        publisher.mark = None
        with session_scope(engine) as s:
            save_position(s, publisher.name, before)
        await publisher.step()
        info = await js.stream_info(names.status_stream)
        subject = names.status_subject(f"{d.tenant_id}.push.sent")
        msg = await js.get_last_msg(names.status_stream, subject)
        assert json.loads(msg.data or b"{}")["delivery_id"] == d.id
        mine = [
            m for m in await _all(js, names.status_stream) if json.loads(m)["delivery_id"] == d.id
        ]
        assert len(mine) == 1
        assert info.state.messages >= 1
    finally:
        await js.delete_stream(names.status_stream)
        await client.close()
        await broker.stop()


async def _all(js: Any, stream: str) -> list[bytes]:
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        out.append((await js.get_msg(stream, seq)).data or b"{}")
    return out


async def test_the_consumer_process_publishes_each_change_across_a_sigkill(
    idle_herald: Herald, rabbit: Rabbit, consumers: Consumers
) -> None:
    """``python -m ingest`` publishes the stream; killed mid-stream, the next process takes
    over once the lease runs out, and every change arrives (repeats only under their ids)."""
    names = Names(rabbit.prefix)
    channel = rabbit.channel
    exchange = await channel.declare_exchange(
        names.status_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, routing_key="#")
    consumers.env["HERALD_STATUS_LEASE_SECONDS"] = "1"
    engine = idle_herald.engine
    with session_scope(engine) as s:
        position(s, stream_name(names))  # the stream starts here, before the changes below
    count = 3000
    deliveries = await asyncio.to_thread(lambda: [_sent(engine) for _ in range(count)])
    stream = Stream(queue)

    ours = {d.id for d in deliveries}

    def of_ours(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[dict[str, Any]]:
        # Earlier tests' consumers may have left the stream's position behind: theirs come too.
        return [b for b in _bodies(messages) if b["delivery_id"] in ours]

    first, _ = await consumers.start()
    got = await stream.take(200, within=30)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    await asyncio.sleep(0.5)
    while (late := await queue.get(no_ack=True, fail=False)) is not None:
        got.append(late)  # what the dead process had published
    before = {b["id"] for b in of_ours(got)}
    assert len(before) < count, "the stream was over before the kill; nothing was proven"

    await consumers.start()
    # Completeness, not speed, is the point: a loaded 2-core machine may take a while.
    deadline = asyncio.get_running_loop().time() + 180
    while {b["delivery_id"] for b in of_ours(got)} != ours:
        assert asyncio.get_running_loop().time() < deadline, "not every change arrived"
        got += await stream.take(1, within=60)
    await asyncio.sleep(1.0)
    while (extra := await queue.get(no_ack=True, fail=False)) is not None:
        got.append(extra)
    ids = Counter(b["id"] for b in of_ours(got))
    assert len(ids) == count  # one change each, by id
    repeats = sum(n - 1 for n in ids.values())
    sys.stderr.write(f"status stream: {len(before)} out before the SIGKILL, {repeats} again\n")
    assert repeats <= 500  # at most the batch in flight
