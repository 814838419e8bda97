"""NATS JetStream ingestion against the real server (JetStream on 127.0.0.1:4222)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from core.settings import Settings
from ingest.names import DEAD_REASON_HEADER
from tests.conftest import Herald, unique
from tests.fakes.provider import FakeProvider
from tests.ingest.conftest import IngestFactory, Jet, events_by_key, until


async def test_a_published_event_is_accepted_and_delivered(
    herald: Herald, jet: Jet, ingest_factory: IngestFactory, fresh_provider: FakeProvider
) -> None:
    sub, run = unique("u"), unique("run")
    await herald.put_subscriber(sub, email="ada@example.com")
    step = {"channel": "email", "subject": run, "text": "x"}
    await herald.put_flow("ingested", event_type="order.placed", steps=[step])
    await ingest_factory(herald.settings, jet, [herald.tenant], client=herald.client)

    body = {"type": "order.placed", "to": [sub], "data": {"n": 1}}
    assert await jet.publish(f"{herald.tenant}.order.placed", body, msg_id="order-1")

    def sent() -> list[str]:
        subjects = (r.json["subject"] for r in fresh_provider.requests("sendgrid"))
        return [s for s in subjects if s == run]

    await until(lambda: len(sent()) == 1, 30, "the delivery")
    assert events_by_key(herald.engine, herald.tenant) == {"order-1": 1}


async def test_a_repeated_msg_id_or_idempotency_key_is_one_event(
    tenant: tuple[Settings, str],
    engine: Engine,
    jet: Jet,
    ingest_factory: IngestFactory,
    temporal_env: WorkflowEnvironment,
) -> None:
    settings, tid = tenant
    service = await ingest_factory(settings, jet, [tid], client=temporal_env.client)
    body = {"type": "user.signup", "to": [{"id": "ada", "email": "ada@example.com"}]}
    assert await jet.publish(f"{tid}.user.signup", body, msg_id="m1")
    # JetStream drops a repeated Nats-Msg-Id inside its duplicate window...
    assert not await jet.publish(f"{tid}.user.signup", body, msg_id="m1")
    # ...and Herald drops a repeated key, whatever the message ids.
    keyed = {**body, "idempotency_key": "k1"}
    assert await jet.publish(f"{tid}.user.signup", keyed, msg_id="m2")
    assert await jet.publish(f"{tid}.user.signup", keyed, msg_id="m3")

    c = service.ingestor.counters
    await until(lambda: c.accepted + c.duplicates == 3, 10, "three messages taken")
    assert events_by_key(engine, tid) == {"m1": 1, "k1": 1}
    assert (c.accepted, c.duplicates) == (2, 1)


async def test_a_malformed_message_is_dead_lettered_with_the_reason(
    tenant: tuple[Settings, str],
    jet: Jet,
    ingest_factory: IngestFactory,
    temporal_env: WorkflowEnvironment,
) -> None:
    settings, tid = tenant
    await ingest_factory(settings, jet, [tid], client=temporal_env.client)
    assert await jet.publish(f"{tid}.user.signup", b"{oops", msg_id="bad-1")

    dead = await jet.js.pull_subscribe(jet.names.dead_subject, stream=jet.names.dead_stream)
    (message,) = await dead.fetch(1, timeout=10)
    headers = message.headers or {}
    assert "body is not JSON" in headers[DEAD_REASON_HEADER]
    assert headers["x-herald-msg-id"] == "bad-1"
    assert headers["x-herald-subject"] == f"{jet.prefix}.events.{tid}.user.signup"
    assert message.data == b"{oops"
