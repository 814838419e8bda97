"""The consumer's configuration and its AsyncAPI document, served beside the OpenAPI one."""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from core.settings import Settings
from ingest.app import ConfigError, IngestService, asyncapi_schema
from tests.conftest import Herald, make_settings, open_api, unique
from tests.dispatching.test_outbox import Proxy
from tests.fakes.provider import FakeProvider
from tests.ingest.conftest import IngestFactory, Rabbit, until


async def test_the_api_serves_the_asyncapi_document(
    engine: Engine,  # the session's clean schema, before the API's lifespan uses it
    database_url: str,
    temporal_env: WorkflowEnvironment,
) -> None:
    settings, key, _ = make_settings(database_url, broker_prefix="acme")
    async with AsyncExitStack() as stack:
        _, http = await open_api(stack, settings, key, temporal_env.client)
        r = await http.get("/asyncapi.json")
        openapi = (await http.get("/openapi.json")).json()
    assert r.status_code == 200
    doc = r.json()
    assert doc["asyncapi"].startswith("3.")
    channel = doc["channels"]["acme.events"]
    assert channel["address"] == "{tenant}.{event_type}"
    assert channel["bindings"]["amqp"]["queue"]["name"] == "acme.ingest.{tenant}"
    # The message is the body of POST /v1/events, with the same schema.
    assert "EventCreate" in doc["components"]["schemas"]
    assert doc["operations"]["acme.events.dead"]["action"] == "send"  # the dead letters
    assert "/asyncapi.json" in openapi["info"]["description"]


def test_a_nats_url_documents_jetstream_subjects() -> None:
    settings = Settings.model_validate(
        {"broker_url": "nats://127.0.0.1:4222", "broker_prefix": "acme"}
    )
    (channel,) = asyncapi_schema(settings)["channels"].values()
    assert channel["address"] == "acme.events.{tenant}.{event_type}"


def test_the_consumer_refuses_to_start_half_configured(database_url: str) -> None:
    settings, _, _ = make_settings(database_url)
    with pytest.raises(ConfigError, match="HERALD_BROKER_URL"):
        IngestService(settings)
    amqp = Settings.model_validate({"broker_url": "amqp://127.0.0.1:5672/"})
    with pytest.raises(ConfigError, match="HERALD_BROKER_TENANTS"):
        IngestService(settings.model_copy(update={"broker_url": amqp.broker_url}))
    with pytest.raises(ValidationError, match="Kafka is not supported yet"):
        Settings.model_validate({"broker_url": "kafka://127.0.0.1:9092"})
    with pytest.raises(ValidationError, match="may not contain"):
        Settings.model_validate({"broker_tenants": "acme,bad.name"})
    tenants = Settings.model_validate({"broker_tenants": " acme, globex ,acme"}).broker_tenants
    assert tenants == ["acme", "globex"]


async def test_temporal_down_events_are_acked_and_the_consumer_starts_them_later(
    herald: Herald,
    rabbit: Rabbit,
    ingest_factory: IngestFactory,
    temporal_env: WorkflowEnvironment,
    fresh_provider: FakeProvider,
) -> None:
    """The consumer runs its own outbox: it does not need the API to start what it took."""
    proxy = Proxy(temporal_env.client.service_client.config.target_host)  # down for now
    try:
        sub, run = unique("u"), unique("run")
        await herald.put_subscriber(sub, email="ada@example.com")
        step = {"channel": "email", "subject": run, "text": "x"}
        await herald.put_flow("ingested", event_type="order.placed", steps=[step])
        service = await ingest_factory(
            herald.settings,
            rabbit,
            [herald.tenant],
            temporal_address=f"127.0.0.1:{proxy.port}",
            temporal_connect_timeout_seconds=1,
        )
        for n in range(3):
            body = {"to": [sub], "data": {"n": n}}
            await rabbit.publish(f"{herald.tenant}.order.placed", body, message_id=f"{run}-{n}")
        c = service.ingestor.counters
        await until(lambda: c.accepted == 3, 15, "three events stored")
        # Stored and acked: nothing waits in the broker, nothing is sent yet.
        assert await rabbit.waiting(rabbit.names.tenant_queue(herald.tenant)) == 0
        assert not [r for r in fresh_provider.requests("sendgrid") if r.json["subject"] == run]

        await proxy.up()
        # What its periodic sweep does (HERALD_DISPATCH_SWEEP_SECONDS), without the wait:
        # only the tenants it serves, so exactly these three.
        assert await service.dispatcher.sweep_once(grace=timedelta(0)) == 3

        def sent() -> int:
            return sum(r.json["subject"] == run for r in fresh_provider.requests("sendgrid"))

        await until(lambda: sent() == 3, 30, "three deliveries")
    finally:
        await proxy.down()
