"""Real RabbitMQ (127.0.0.1:5672) and NATS JetStream (127.0.0.1:4222), a prefix per test.

Every test gets its own ``HERALD_BROKER_PREFIX``, so its exchanges, queues and streams
are its own; they are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import nats
import pytest
from aio_pika.abc import AbstractIncomingMessage
from nats.js import JetStreamContext
from pydantic import SecretStr
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from core.settings import Settings
from ingest.accept import Backoff
from ingest.app import IngestService
from ingest.names import Names
from store.db import read_scope, session_scope
from store.models import Event
from store.tenants import ensure_api_keys
from tests.conftest import Herald, HeraldFactory, make_settings, unique
from tests.fakes.provider import FakeProvider

RABBITMQ_URL = os.environ.get("HERALD_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("HERALD_TEST_NATS_URL", "nats://127.0.0.1:4222")
# Short holds, so an outage test recovers in well under a second once the database is back.
TEST_BACKOFF = (0.05, 0.5)

Body = dict[str, Any] | list[Any] | bytes


def encode(body: Body) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


class Rabbit:
    """Publishes like an outside producer (aio-pika, publisher confirms) and reads queues."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, prefix: str) -> None:
        self.channel = channel
        self.prefix = prefix
        self.names = Names(prefix)
        self.url = RABBITMQ_URL
        self.tenants: set[str] = set()

    async def publish(self, routing_key: str, body: Body, message_id: str | None = None) -> None:
        exchange = await self.channel.get_exchange(self.names.exchange)  # declared by Herald
        message = aio_pika.Message(
            encode(body),
            message_id=message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await exchange.publish(message, routing_key=routing_key)

    async def publish_many(self, items: Sequence[tuple[str, Body, str | None]]) -> None:
        for start in range(0, len(items), 100):
            await asyncio.gather(*(self.publish(*item) for item in items[start : start + 100]))

    async def dead_letters(self, count: int, within: float = 10.0) -> list[AbstractIncomingMessage]:
        """Take ``count`` messages off the dead-letter queue (and check no more arrive)."""
        queue = await self.channel.get_queue(self.names.dead_queue)
        got: list[AbstractIncomingMessage] = []
        deadline = asyncio.get_running_loop().time() + within
        while len(got) < count and asyncio.get_running_loop().time() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
            else:
                got.append(message)
        await asyncio.sleep(0.3)
        extra = await queue.get(no_ack=True, fail=False)
        assert extra is None, f"unexpected dead letter: {extra.headers}"
        return got

    async def waiting(self, queue_name: str) -> int:
        """Messages ready in a queue (not counting those a consumer holds unacked)."""
        queue = await self.channel.declare_queue(queue_name, passive=True)
        return int(queue.declaration_result.message_count or 0)

    async def cleanup(self) -> None:
        names = [self.names.dead_queue, self.names.unrouted]
        names += [self.names.tenant_queue(t) for t in self.tenants]
        for name in names:
            with contextlib.suppress(Exception):
                await self.channel.queue_delete(name)
        for name in (self.names.exchange, self.names.unrouted):
            with contextlib.suppress(Exception):
                await self.channel.exchange_delete(name)


@pytest.fixture
async def rabbit() -> AsyncIterator[Rabbit]:
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        helper = Rabbit(channel, unique("it"))
        try:
            yield helper
        finally:
            # A channel a failed passive declare closed cannot clean up: use a fresh one.
            helper.channel = await connection.channel()
            await helper.cleanup()
    finally:
        await connection.close()


class Jet:
    """A JetStream publisher, deleting the test's streams (and so their consumers) after."""

    def __init__(self, js: JetStreamContext, prefix: str) -> None:
        self.js = js
        self.prefix = prefix
        self.names = Names(prefix)
        self.url = NATS_URL
        self.tenants: set[str] = set()

    async def publish(self, tenant_type: str, body: Body, msg_id: str | None = None) -> bool:
        """Publish to ``<prefix>.events.<tenant>.<type>``; False when the stream dropped it."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        ack = await self.js.publish(
            f"{self.prefix}.events.{tenant_type}",
            encode(body),
            headers=headers,
            stream=self.names.stream,
        )
        return not ack.duplicate

    async def cleanup(self) -> None:
        for stream in (self.names.stream, self.names.dead_stream):
            with contextlib.suppress(Exception):
                await self.js.delete_stream(stream)


@pytest.fixture
async def jet() -> AsyncIterator[Jet]:
    client = await nats.connect(NATS_URL)
    helper = Jet(client.jetstream(), unique("it"))
    try:
        yield helper
    finally:
        await helper.cleanup()
        await client.close()


@pytest.fixture
def tenant(
    engine: Engine, database_url: str, temporal_env: WorkflowEnvironment
) -> tuple[Settings, str]:
    """A tenant with no flows: its events are accepted with no notification to start."""
    target = temporal_env.client.service_client.config.target_host
    settings, key, tenant = make_settings(database_url, temporal_address=target)
    with session_scope(engine) as session:
        ensure_api_keys(session, {key: tenant})
    return settings, tenant


IngestFactory = Callable[..., Awaitable[IngestService]]


@pytest.fixture
async def ingest_factory() -> AsyncIterator[IngestFactory]:
    """Start consumers in this process (the real FastStream app); stopped, drained, after."""
    services: list[IngestService] = []

    async def start(
        settings: Settings,
        broker: Rabbit | Jet,
        tenants: Sequence[str],
        client: Client | None = None,
        **overrides: Any,
    ) -> IngestService:
        broker.tenants.update(tenants)
        values = {
            "broker_url": SecretStr(broker.url),
            "broker_tenants": list(tenants),
            "broker_prefix": broker.prefix,
            **overrides,
        }
        service = IngestService(
            settings.model_copy(update=values), client=client, backoff=Backoff(*TEST_BACKOFF)
        )
        await service.app.start()
        services.append(service)
        return service

    yield start
    for service in reversed(services):
        await service.app.stop()


def events_by_key(engine: Engine, tenant: str) -> dict[str, int]:
    """How many events the tenant has per idempotency key."""
    with read_scope(engine) as session:
        rows = session.exec(
            select(Event.idempotency_key, func.count(col(Event.id)))
            .where(Event.tenant_id == tenant)
            .group_by(col(Event.idempotency_key))
        ).all()
    return {str(key): int(n) for key, n in rows}


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.05)


REPO = Path(__file__).resolve().parents[2]


class Consumers:
    """Consumer processes for one Herald, each logging to its own file."""

    def __init__(self, herald: Herald, rabbit: Rabbit, provider: FakeProvider, tmp: Path) -> None:
        s = herald.settings
        self.tmp = tmp
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HERALD_")},
            "HERALD_ENV": "test",
            "HERALD_DATABASE_URL": s.database_url,
            "HERALD_TEMPORAL_ADDRESS": s.temporal_target,
            "HERALD_TASK_QUEUE_PREFIX": s.task_queue_prefix,
            # What a notification takes from the settings when it starts, as the API has it.
            "HERALD_SENDGRID_API_KEY": "SG.test",
            "HERALD_SENDGRID_BASE_URL": provider.url,
            "HERALD_DEAD_LETTER_RETENTION": "PT0S",
            "HERALD_BROKER_URL": rabbit.url,
            "HERALD_BROKER_TENANTS": herald.tenant,
            "HERALD_BROKER_PREFIX": rabbit.prefix,
            "HERALD_BROKER_PREFETCH": "10",
            # Events acked but not yet started when a process died are swept by the next.
            "HERALD_DISPATCH_SWEEP_SECONDS": "1",
        }
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        rabbit.tenants.add(herald.tenant)  # its queue is deleted after the test

    def spawn(self) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"ingest-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ingest"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((proc, log))
        return proc, log

    async def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        """Spawn one and wait until it consumes."""
        proc, log = self.spawn()
        await until(
            lambda: "consuming events for" in log.read_text() or proc.poll() is not None,
            30,
            "the consumer to start",
        )
        assert proc.poll() is None, output(log)
        return proc, log

    def kill_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
async def idle_herald(herald_factory: HeraldFactory) -> Herald:
    """No workers yet: this process stays idle, so the test sees the stream as it goes."""
    return await herald_factory(queues=())


@pytest.fixture
def consumers(
    idle_herald: Herald, rabbit: Rabbit, fresh_provider: FakeProvider, tmp_path: Path
) -> Iterator[Consumers]:
    c = Consumers(idle_herald, rabbit, fresh_provider, tmp_path)
    try:
        yield c
    finally:
        c.kill_all()


def output(log: Path) -> str:
    return log.read_text(errors="replace")
