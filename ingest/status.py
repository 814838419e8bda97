"""The status stream: every delivery status change, published from the delivery history.

RabbitMQ: durable topic exchange ``<prefix>.status``, routing key
``<tenant>.<channel>.<status>``, persistent JSON messages whose ``message_id`` is stable.
NATS JetStream: subject ``<prefix>.status.<tenant>.<channel>.<status>`` in the stream
``<prefix>-status``, with ``Nats-Msg-Id`` (JetStream drops repeats in its window).

The history is the outbox (``store.status_stream``): a change is published once it is
committed, even across a crash; a crash between a publish and the saved position
publishes those changes again, under the same id. One process at a time publishes: it
holds a lease on the stream's cursor row, renewed with every batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from faststream.nats import NatsBroker
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange
from sqlalchemy.engine import Engine

from ingest.names import Names
from store.db import session_scope
from store.status_stream import StatusChange, Watermark, claim, history_after, save_position

log = logging.getLogger("herald.status")

Send = Callable[[StatusChange], Awaitable[None]]


def stream_name(names: Names) -> str:
    """The stream's cursor: one per broker prefix (each is a stream of its own)."""
    return f"status:{names.prefix}"


def status_exchange(names: Names) -> RabbitExchange:
    return RabbitExchange(names.status_exchange, type=ExchangeType.TOPIC, durable=True)


def rabbit_sender(broker: RabbitBroker, names: Names) -> Send:
    exchange = status_exchange(names)

    async def send(change: StatusChange) -> None:
        # Not mandatory: a topic nobody has bound a queue to yet is not an error.
        await broker.publish(
            change.body(),
            exchange=exchange,
            routing_key=change.routing_key,
            message_id=change.message_id,
            persist=True,
            mandatory=False,
            content_type="application/json",
        )

    return send


def nats_sender(broker: NatsBroker, names: Names) -> Send:
    async def send(change: StatusChange) -> None:
        await broker.publish(
            change.body(),
            subject=names.status_subject(change.routing_key),
            headers={"Nats-Msg-Id": change.message_id},
            stream=names.status_stream,
        )

    return send


async def declare(broker: RabbitBroker | NatsBroker, names: Names) -> None:
    """The exchange (or stream) exists before the first publish; consumers bind to it."""
    if isinstance(broker, RabbitBroker):
        await broker.declare_exchange(status_exchange(names))
        return
    # Adding a stream that exists with the same config is a no-op.
    await broker.connect()
    js = broker.connection.jetstream()
    await js.add_stream(name=names.status_stream, subjects=[names.status_subject(">")])


class StatusPublisher:
    """Reads committed changes after the saved position, publishes them, moves the position."""

    def __init__(
        self,
        engine: Engine,
        send: Send,
        *,
        name: str,
        batch: int = 500,
        poll: float = 0.5,
        grace: float = 60.0,
        lease: float = 30.0,
    ) -> None:
        self.engine = engine
        self.send = send
        self.name = name
        self.batch = batch
        self.poll = poll
        self.grace = grace
        self.lease = lease
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.mark: Watermark | None = None
        self.published = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: a batch at a time; idle, lease lost or failing, it waits."""
        delay = self.poll
        while not stopping.is_set():
            try:
                moved = await self.step()
                delay = 0.0 if moved >= self.batch else self.poll
            except Exception as exc:  # the database or the broker is away: retried
                log.warning("status stream: %s; retrying", exc)
                delay = min(max(delay * 2, 1.0), 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)

    async def step(self) -> int:
        """One batch; how many history rows it covered (0: nothing new, or not our turn)."""
        rows = await asyncio.to_thread(self._read)
        if rows is None or self.mark is None:
            return 0
        fresh = self.mark.fresh(rows)
        # Confirms are awaited together, a chunk at a time, not one round trip each.
        for lo in range(0, len(fresh), 100):
            await asyncio.gather(*(self.send(c) for c in fresh[lo : lo + 100]))
        self.published += len(fresh)
        before = self.mark.position
        after = self.mark.settle([rid for rid, _ in rows], time.monotonic(), self.grace)
        if after != before:
            await asyncio.to_thread(self._save, after)
        return len(rows)

    def _read(self) -> list[tuple[int, StatusChange | None]] | None:
        with session_scope(self.engine) as session:
            start = claim(session, self.name, self.owner, self.lease)
            if start is None:
                self.mark = None  # another process holds the stream; start afresh after it
                return None
            if self.mark is None or self.mark.position != start:
                self.mark = Watermark(position=start)
            mark = self.mark
            return history_after(session, mark.read_after, self.batch, missing=mark.missing)

    def _save(self, value: int) -> None:
        with session_scope(self.engine) as session:
            save_position(session, self.name, value, self.owner)
