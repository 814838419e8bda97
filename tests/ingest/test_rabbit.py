"""RabbitMQ ingestion against the real broker: exactly once, dead letters, outages."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from temporalio.testing import WorkflowEnvironment

from core.settings import Settings
from ingest.names import DEAD_REASON_HEADER
from store.db import make_engine, session_scope
from store.schema import migrate
from store.tenants import ensure_api_keys
from tests.conftest import Herald, make_settings, unique
from tests.fakes.provider import FakeProvider
from tests.ingest.conftest import Body, IngestFactory, Rabbit, events_by_key, until


def signup(to: list[object], **extra: object) -> dict[str, object]:
    return {"type": "user.signup", "to": to, "data": {}, **extra}


async def test_500_events_are_each_delivered_exactly_once(
    herald: Herald, rabbit: Rabbit, ingest_factory: IngestFactory, fresh_provider: FakeProvider
) -> None:
    sub, run = unique("u"), unique("run")
    await herald.put_subscriber(sub, email="ada@example.com")
    step = {"channel": "email", "subject": run + "-{{ data.n }}", "text": "x"}
    await herald.put_flow("ingested", event_type="order.placed", steps=[step])
    await ingest_factory(herald.settings, rabbit, [herald.tenant], client=herald.client)

    key = f"{herald.tenant}.order.placed"
    body = {"to": [sub], "data": {}}  # the type comes from the routing key
    messages = [(key, {**body, "data": {"n": n}}, f"{run}-{n}") for n in range(500)]
    await rabbit.publish_many(messages)
    await rabbit.publish_many(messages[:20])  # a producer that retried: same message ids

    def sent() -> Counter[str]:
        subjects = (r.json["subject"] for r in fresh_provider.requests("sendgrid"))
        return Counter(s for s in subjects if s.startswith(run))

    await until(lambda: len(sent()) == 500, 120, "500 deliveries")
    await asyncio.sleep(0.5)  # time for a duplicate to show
    assert max(sent().values()) == 1
    assert events_by_key(herald.engine, herald.tenant) == {f"{run}-{n}": 1 for n in range(500)}


async def test_a_repeated_message_id_or_idempotency_key_is_one_event(
    tenant: tuple[Settings, str],
    engine: Engine,
    rabbit: Rabbit,
    ingest_factory: IngestFactory,
    temporal_env: WorkflowEnvironment,
) -> None:
    settings, tid = tenant
    service = await ingest_factory(settings, rabbit, [tid], client=temporal_env.client)
    ada = {"id": "ada", "email": "ada@example.com"}
    await rabbit.publish(f"{tid}.user.signup", signup([ada]), message_id="order-1")
    await rabbit.publish(f"{tid}.user.signup", signup([ada]), message_id="order-1")
    # aio-pika gives each of these a random message id: the body's key decides.
    await rabbit.publish(f"{tid}.user.signup", signup([ada], idempotency_key="order-2"))
    await rabbit.publish(f"{tid}.user.signup", signup([ada], idempotency_key="order-2"))

    c = service.ingestor.counters
    await until(lambda: c.accepted + c.duplicates == 4, 10, "four messages taken")
    assert events_by_key(engine, tid) == {"order-1": 1, "order-2": 1}
    assert (c.accepted, c.duplicates, c.dead) == (2, 2, 0)


async def test_malformed_messages_are_dead_lettered_with_their_reason(
    tenant: tuple[Settings, str],
    engine: Engine,
    rabbit: Rabbit,
    ingest_factory: IngestFactory,
    temporal_env: WorkflowEnvironment,
) -> None:
    settings, tid = tenant
    ghost = unique("ghost")  # listed, but Herald has no such tenant
    await ingest_factory(settings, rabbit, [tid, ghost], client=temporal_env.client)
    ada = {"id": "ada", "email": "ada@example.com"}
    cases: dict[str, tuple[str, Body, str]] = {
        "not-json": (f"{tid}.user.signup", b"{not json", "body is not JSON"),
        "array": (f"{tid}.user.signup", [ada], "body must be a JSON object"),
        "invalid": (f"{tid}.user.signup", signup([]), "invalid event: to:"),
        "bad-type": (f"{tid}.user.signup", signup([ada], type="x y"), "routing key names"),
        "stranger": (f"{tid}.user.signup", signup(["nobody"]), "unknown subscriber(s) nobody"),
        "ghost": (f"{ghost}.user.signup", signup([ada]), f"unknown tenant {ghost!r}"),
        "unlisted": ("somebody-else.user.signup", signup([ada]), "no Herald consumer serves"),
    }
    for message_id, (routing_key, body, _) in cases.items():
        await rabbit.publish(routing_key, body, message_id=message_id)
    # Not an error: an event no flow matches is accepted with no notification.
    await rabbit.publish(f"{tid}.user.signup", signup([ada]), message_id="no-flow")
    # Reusing a key for a different body is refused, as the API's 409 does.
    await rabbit.publish(f"{tid}.user.signup", signup([ada], data={"v": 2}), message_id="no-flow")

    dead = await rabbit.dead_letters(len(cases) + 1)
    reasons = {str(m.message_id): str((m.headers or {})[DEAD_REASON_HEADER]) for m in dead}
    for message_id, (routing_key, _, reason) in cases.items():
        assert reason in reasons[message_id], (message_id, reasons[message_id])
        dead_letter = next(m for m in dead if m.message_id == message_id)
        assert (dead_letter.headers or {})["x-herald-routing-key"] == routing_key
    assert "reused with a different body" in reasons["no-flow"]
    assert events_by_key(engine, tid) == {"no-flow": 1}
    # Nothing is left to be redelivered: every message was acked after its dead letter.
    for tenant_id in (tid, ghost):
        assert await rabbit.waiting(rabbit.names.tenant_queue(tenant_id)) == 0


class AbsentDatabase:
    """A database that is not there yet, brought up whole in one step (no half state)."""

    def __init__(self, database_url: str, tmp_path: Path) -> None:
        self.base = make_url(database_url)
        self.sqlite = self.base.get_backend_name() == "sqlite"
        if self.sqlite:
            self.path = tmp_path / "absent" / "herald.db"
            self.path.mkdir(parents=True)  # a directory where the file should be: cannot open
            self.url = f"sqlite:///{self.path}"
        else:
            self.name = unique("herald_absent").replace("-", "_")
            self.url = self._url(self.name)

    def bring_up(self, tenant: str) -> None:
        if self.sqlite:
            ready = self.path.parent.parent / "ready" / "herald.db"
            self._prepare(f"sqlite:///{ready}", tenant)
            self.path.rmdir()
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{ready}{suffix}").exists():
                    Path(f"{ready}{suffix}").rename(f"{self.path}{suffix}")
            return
        self._admin(f'CREATE DATABASE "{self.name}_prep"')
        self._prepare(self._url(f"{self.name}_prep"), tenant)
        # A copy of a template appears complete, at once.
        self._admin(f'CREATE DATABASE "{self.name}" TEMPLATE "{self.name}_prep"')

    def drop(self) -> None:
        if not self.sqlite:
            for name in (self.name, f"{self.name}_prep"):
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @staticmethod
    def _prepare(url: str, tenant: str) -> None:
        engine = make_engine(url)
        migrate(engine)
        with session_scope(engine) as session:
            ensure_api_keys(session, {unique("key"): tenant})
        engine.dispose()

    def _url(self, database: str) -> str:
        return self.base.set(database=database).render_as_string(hide_password=False)

    def _admin(self, sql: str) -> None:
        admin = create_engine(self.base.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(sql))
        finally:
            admin.dispose()


@pytest.fixture
def absent(database_url: str, tmp_path: Path) -> Iterator[AbsentDatabase]:
    """Requested before ``ingest_factory``, so it is dropped after the consumer stopped."""
    db = AbsentDatabase(database_url, tmp_path)
    yield db
    db.drop()


async def test_database_down_messages_wait_nacked_then_are_taken_once_it_is_back(
    absent: AbsentDatabase,
    rabbit: Rabbit,
    ingest_factory: IngestFactory,
    temporal_env: WorkflowEnvironment,
) -> None:
    settings, _, tid = make_settings(absent.url)
    service = await ingest_factory(
        settings, rabbit, [tid], client=temporal_env.client, broker_prefetch=4
    )
    ada = {"id": "ada", "email": "ada@example.com"}
    for n in range(12):
        await rabbit.publish(f"{tid}.user.signup", signup([ada]), message_id=f"m{n}")
    c = service.ingestor.counters
    await until(lambda: c.retried >= 8, 10, "messages handed back while the database is down")
    # Prefetch bounds what the consumer holds; the rest wait in the queue.
    assert await rabbit.waiting(rabbit.names.tenant_queue(tid)) >= 12 - 4
    assert c.accepted == 0 and c.dead == 0

    absent.bring_up(tid)
    check = make_engine(absent.url)
    try:
        await until(lambda: len(events_by_key(check, tid)) == 12, 20, "all 12 accepted")
        assert events_by_key(check, tid) == {f"m{n}": 1 for n in range(12)}
    finally:
        check.dispose()
    assert c.dead == 0
