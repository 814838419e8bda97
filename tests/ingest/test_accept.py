"""The broker-independent accept path: parsing, the idempotency key, outages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from dispatching.outbox import Dispatcher
from dispatching.temporal import TemporalGateway
from ingest.accept import Backoff, DeadLetterError, Incoming, Ingestor, parse
from store.db import make_engine
from tests.conftest import make_settings

ADA = {"id": "ada", "email": "ada@example.com"}


def incoming(
    body: object, message_id: str | None = "m1", event_type: str | None = "a.b"
) -> Incoming:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Incoming("acme", event_type, raw, message_id)


def test_the_body_key_wins_over_the_message_id() -> None:
    # Client libraries set a message id of their own (aio-pika: a random one on every message).
    _, key = parse(incoming({"type": "a.b", "to": [ADA], "idempotency_key": "k1"}, "random"))
    assert key == "k1"
    _, key = parse(incoming({"type": "a.b", "to": [ADA]}, "m7"))
    assert key == "m7"


def test_a_message_without_any_key_is_refused() -> None:
    with pytest.raises(DeadLetterError, match="no message id"):
        parse(incoming({"type": "a.b", "to": [ADA]}, None))


def test_the_routing_key_may_name_the_type_but_not_contradict_it() -> None:
    body, _ = parse(incoming({"to": [ADA]}, event_type="order.placed"))
    assert body.type == "order.placed"
    with pytest.raises(DeadLetterError, match="routing key names event type"):
        parse(incoming({"type": "other", "to": [ADA]}, event_type="order.placed"))
    with pytest.raises(DeadLetterError, match="invalid event: type"):
        parse(incoming({"to": [ADA]}, event_type=None))


def test_an_unreadable_body_is_refused_with_the_reason() -> None:
    with pytest.raises(DeadLetterError, match="body is not JSON"):
        parse(incoming(b"\xff\xfe"))
    with pytest.raises(DeadLetterError, match="must be a JSON object, not str"):
        parse(incoming("hello"))
    with pytest.raises(DeadLetterError, match="invalid event: to.0"):
        parse(incoming({"type": "a.b", "to": [{"email": "no-id@example.com"}]}))


def test_backoff_grows_with_the_outage_and_resets() -> None:
    backoff = Backoff(initial=0.5, maximum=30)
    assert 0.4 <= backoff.failed() <= 0.6
    assert backoff.in_outage
    backoff.succeeded()
    assert not backoff.in_outage


async def test_a_database_failure_is_a_retry_not_a_dead_letter(
    tmp_path: Path, temporal_env: WorkflowEnvironment
) -> None:
    """Once running, a database that stops answering holds the message for the broker."""
    directory = tmp_path / "herald.db"
    directory.mkdir()  # SQLite cannot open a directory: every query fails as when down
    settings, _, tenant = make_settings(f"sqlite:///{directory}")
    broken = make_engine(settings.database_url)
    gateway = TemporalGateway(settings, temporal_env.client)
    ingestor = Ingestor(broken, Dispatcher(broken, gateway, settings), [tenant], Backoff(0.2, 1))
    ingestor.ready = True  # as if the database went away after the start
    try:
        verdict = await ingestor.take(Incoming(tenant, "a.b", b'{"to": ["ada"]}', "m1"))
    finally:
        broken.dispose()
    assert verdict.action == "retry"
    assert 0.1 < verdict.delay < 0.3
    assert "unable to open database file" in verdict.reason
    assert ingestor.counters.retried == 1 and ingestor.counters.dead == 0
