"""Input limits: a clear 413 or 422 naming the field, on the API and from the broker alike;
a hostile template fails its delivery and leaves the API answering."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, func, select
from temporalio.testing import WorkflowEnvironment

from core.limits import configure
from core.settings import Settings
from dispatching.outbox import Dispatcher
from dispatching.temporal import TemporalGateway
from ingest.accept import Incoming, Ingestor
from store.db import read_scope, session_scope
from store.flows import put_flow
from store.models import Event
from tests.conftest import Herald, HeraldFactory, accept_one, make_settings, open_api, unique
from tests.fakes.provider import FakeProvider

HUGE = "{{ 'x' * 1000000000 }}"


@dataclass
class Api:
    http: httpx.AsyncClient
    settings: Settings
    tenant: str


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture(autouse=True)
def _default_limits() -> Iterator[None]:
    """Each app installs its settings' limits process-wide: put the defaults back."""
    yield
    configure(None)


@pytest.fixture
async def api(temporal_env: WorkflowEnvironment, database_url: str) -> AsyncIterator[ApiFactory]:
    """The API alone (no workers), with chosen settings."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Api:
            client = temporal_env.client
            settings, key, tenant = make_settings(
                database_url, temporal_address=client.service_client.config.target_host, **overrides
            )
            _, http = await open_api(stack, settings, key, client)
            return Api(http, settings, tenant)

        yield start


async def until_final(herald: Herald, event_id: str, within: float = 60) -> dict[str, Any]:
    """Every delivery final (a digest's notification has no workflow of its own to wait on)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        event: dict[str, Any] = (await herald.http.get(f"/v1/events/{event_id}")).json()
        statuses = [d["status"] for n in event["notifications"] for d in n["deliveries"]]
        if statuses and "pending" not in statuses:
            return event
        assert asyncio.get_running_loop().time() < deadline, statuses
        await asyncio.sleep(0.2)


def loc_of(r: httpx.Response) -> list[list[Any]]:
    return [e["loc"] for e in r.json()["detail"]]


def events_of(engine: Engine, tenant: str) -> int:
    with read_scope(engine) as session:
        return session.exec(
            select(func.count()).select_from(Event).where(col(Event.tenant_id) == tenant)
        ).one()


async def test_a_body_over_the_limit_gets_413_without_being_read(api: ApiFactory) -> None:
    a = await api(max_request_bytes=64 * 1024)
    big = {"type": "a.b", "to": ["ada"], "data": {"blob": "x" * 70_000}}
    r = await a.http.post("/v1/events", json=big)  # Content-Length says it all
    assert r.status_code == 413, r.text
    assert r.json()["detail"][0]["loc"] == ["body"]
    assert "65,536 bytes (HERALD_MAX_REQUEST_BYTES)" in r.json()["detail"][0]["msg"]

    pulled = 0

    async def endless() -> AsyncIterator[bytes]:  # chunked: no Content-Length to go by
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield b" " * 16_384

    r = await a.http.post(
        "/v1/events", content=endless(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert pulled <= 6, f"read {pulled} chunks of a body refused after the 5th"

    # Bulk import has its own, larger limit.
    rows = [{"id": f"r{i}", "data": {"n": "y" * 100}} for i in range(1000)]
    r = await a.http.post("/v1/subscribers/bulk", json={"subscribers": rows})
    assert r.status_code == 200, r.text
    assert len(r.json()["created"]) == 1000


async def test_data_over_the_limit_is_422_naming_the_field(api: ApiFactory, engine: Engine) -> None:
    a = await api(max_data_bytes=1000)
    fits = {"blob": "x" * (1000 - len('{"blob":""}'))}
    over = {"blob": "x" * 1000}
    r = await a.http.put("/v1/subscribers/ada", json={"data": fits})
    assert r.status_code == 200, r.text

    r = await a.http.put("/v1/subscribers/ada", json={"data": over})
    assert r.status_code == 422 and loc_of(r) == [["body", "data"]], r.text
    assert "over the 1,000-byte limit (HERALD_MAX_DATA_BYTES)" in r.json()["detail"][0]["msg"]

    r = await a.http.post("/v1/events", json={"type": "a.b", "to": ["ada"], "data": over})
    assert r.status_code == 422 and loc_of(r) == [["body", "data"]], r.text
    r = await a.http.post("/v1/events", json={"type": "a.b", "to": [{"id": "bo", "data": over}]})
    assert r.status_code == 422, r.text
    (loc,) = loc_of(r)
    assert loc[:3] == ["body", "to", 0] and loc[-1] == "data"
    assert events_of(engine, a.tenant) == 0  # nothing half-stored

    r = await a.http.post("/v1/subscribers/bulk", json={"subscribers": [{"id": "c", "data": over}]})
    assert r.status_code == 200 and r.json()["invalid"][0]["field"] == "data", r.text


async def test_counts_over_their_limits_are_422_naming_the_field(api: ApiFactory) -> None:
    a = await api(max_recipients=3, max_flow_steps=2, max_push_tokens=2, max_replay_events=5)
    to = [{"id": f"u{i}"} for i in range(4)]
    r = await a.http.post("/v1/events", json={"type": "a.b", "to": to})
    assert r.status_code == 422 and loc_of(r) == [["body", "to"]], r.text
    assert "4 recipients, over the limit of 3 (HERALD_MAX_RECIPIENTS)" in r.text
    r = await a.http.post("/v1/events", json={"type": "a.b", "to": to[:3]})
    assert r.status_code == 202, r.text

    step = {"channel": "sms", "text": "hi"}
    r = await a.http.put("/v1/flows/f", json={"event_type": "a.b", "steps": [step] * 3})
    assert r.status_code == 422 and loc_of(r) == [["body", "steps"]], r.text
    assert "HERALD_MAX_FLOW_STEPS" in r.text
    r = await a.http.put("/v1/flows/f", json={"event_type": "a.b", "steps": [step] * 2})
    assert r.status_code == 200, r.text

    r = await a.http.put("/v1/subscribers/p", json={"push_tokens": ["t1", "t2", "t3"]})
    assert r.status_code == 422 and loc_of(r) == [["body", "push_tokens"]], r.text
    assert "HERALD_MAX_PUSH_TOKENS" in r.text
    r = await a.http.put("/v1/subscribers/p", json={"push_tokens": ["t1", "t2", "t1"]})
    assert r.status_code == 200 and r.json()["push_tokens"] == ["t1", "t2"], r.text

    r = await a.http.post("/v1/events/replay", json={"type": "a.b", "limit": 6, "dry_run": True})
    assert r.status_code == 422 and loc_of(r) == [["body", "limit"]], r.text
    assert "HERALD_MAX_REPLAY_EVENTS" in r.text
    r = await a.http.post("/v1/events/replay", json={"type": "a.b", "dry_run": True})
    assert r.status_code == 200, r.text  # the default (1,000) is capped at the limit

    # The OpenAPI document states the configured limits.
    schemas = (await a.http.get("/openapi.json")).json()["components"]["schemas"]
    assert schemas["EventCreate"]["properties"]["to"]["maxItems"] == 3
    assert schemas["FlowCreate"]["properties"]["steps"]["maxItems"] == 2


async def test_templates_and_flows_over_their_limits_are_422(
    api: ApiFactory, engine: Engine
) -> None:
    a = await api(max_template_bytes=30_000, max_workflow_input_bytes=65_536)
    step = {"channel": "email", "subject": "s", "text": "t" * 30_001}
    r = await a.http.put("/v1/flows/f", json={"event_type": "a.b", "steps": [step]})
    assert r.status_code == 422, r.text
    (loc,) = loc_of(r)
    assert loc[:3] == ["body", "steps", 0] and loc[-1] == "text"
    assert "30,001 bytes, over the 30,000-byte limit (HERALD_MAX_TEMPLATE_BYTES)" in r.text

    # Each template fits; together they make a workflow input over the limit.
    steps = [{**step, "text": "t" * 29_000, "html": "h" * 29_000}]
    r = await a.http.put("/v1/flows/f", json={"event_type": "a.b", "steps": steps})
    assert r.status_code == 422 and loc_of(r) == [["body"]], r.text
    assert r.json()["detail"][0]["type"] == "workflow_input_too_large"
    assert "HERALD_MAX_WORKFLOW_INPUT_BYTES" in r.text

    # A flow stored before the limit (or with a larger one) is refused when an event
    # would start it, instead of failing at every outbox sweep.
    assert (await a.http.put("/v1/subscribers/ada", json={})).status_code == 200
    past = accept_one(engine, a.tenant, "big.thing", "ada").event.id  # before the flow came
    with session_scope(engine) as session:
        put_flow(session, a.tenant, "legacy", {"event_type": "big.thing", "steps": steps})
    r = await a.http.post("/v1/events", json={"type": "big.thing", "to": [{"id": "ada"}]})
    assert r.status_code == 422 and loc_of(r) == [["body", "type"]], r.text
    assert "flow 'legacy'" in r.text and "HERALD_MAX_WORKFLOW_INPUT_BYTES" in r.text
    assert events_of(engine, a.tenant) == 1  # the past one only

    r = await a.http.post(f"/v1/events/{past}/replay", json={"flow": "legacy"})
    assert r.status_code == 422 and loc_of(r) == [["body", "flow"]], r.text


async def test_the_broker_path_refuses_the_same_with_the_reason(
    api: ApiFactory, temporal_env: WorkflowEnvironment, engine: Engine
) -> None:
    a = await api(max_data_bytes=1000, max_request_bytes=4096, max_workflow_input_bytes=65_536)
    settings, tenant = a.settings, a.tenant  # the tenant exists once the API has started
    gateway = TemporalGateway(settings, temporal_env.client)
    ingestor = Ingestor(engine, Dispatcher(engine, gateway, settings), [tenant])
    assert await ingestor.prepare_once()

    async def take(body: dict[str, Any] | bytes) -> str:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        verdict = await ingestor.take(Incoming(tenant, "a.b", raw, unique("m")))
        assert verdict.action == "dead", verdict
        return verdict.reason

    assert "data: " in (reason := await take({"to": [{"id": "ada"}], "data": {"b": "x" * 1000}}))
    assert "HERALD_MAX_DATA_BYTES" in reason
    reason = await take(json.dumps({"to": [{"id": "ada"}], "pad": " " * 5000}).encode())
    assert "over the 4,096-byte limit (HERALD_MAX_REQUEST_BYTES)" in reason

    steps = [{"channel": "email", "subject": "s", "text": "t" * 40_000, "html": "h" * 40_000}]
    with session_scope(engine) as session:
        put_flow(session, tenant, "legacy", {"event_type": "a.b", "steps": steps})
    reason = await take({"to": [{"id": "ada"}]})
    assert "flow 'legacy'" in reason and "HERALD_MAX_WORKFLOW_INPUT_BYTES" in reason
    assert events_of(engine, tenant) == 0
    assert ingestor.counters.dead == 3 and ingestor.counters.accepted == 0


async def test_a_hostile_template_fails_its_delivery_and_the_api_stays_responsive(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald: Herald = await herald_factory()
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com", phone="+14155550100")
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    # The throttle key is rendered on the request path, when the event is accepted.
    await herald.put_flow(
        "hostile",
        event_type="hostile.thing",
        throttle={"limit": 5, "period": "PT1H", "key": HUGE},
        steps=[
            {"channel": "email", "subject": HUGE, "text": "hello"},
            {"channel": "email", "subject": "loops", "text": loops},
            {"channel": "sms", "text": "Hello {{ data.name }}, all is well"},
        ],
    )
    # A digest key is rendered on the dispatch path.
    await herald.put_flow(
        "hostile-digest",
        event_type="hostile.thing",
        steps=[
            {"type": "digest", "window": "PT1S", "key": HUGE},
            {"channel": "sms", "text": "{{ digest.count }} events"},
        ],
    )
    body = {"type": "hostile.thing", "to": [sub], "data": {"name": "Ada"}}
    r = await asyncio.wait_for(herald.http.post("/v1/events", json=body), 20)
    assert r.status_code == 202, r.text
    event = await until_final(herald, r.json()["id"])

    by_flow = {n["flow"]: n for n in event["notifications"]}
    huge, loop, sms = by_flow["hostile"]["deliveries"]
    assert huge["status"] == "failed" and "HERALD_MAX_RENDER_BYTES" in huge["reason"]
    assert loop["status"] == "failed" and "HERALD_MAX_RENDER_STEPS" in loop["reason"]
    assert sms["status"] == "sent"
    assert "Hello Ada, all is well" in [r.form["Body"] for r in fresh_provider.requests("twilio")]
    (digest_sms,) = by_flow["hostile-digest"]["deliveries"]
    assert digest_sms["status"] == "sent"  # the key failed to render: digested under none

    # The API answered other requests all along.
    r = await asyncio.wait_for(herald.http.get(f"/v1/subscribers/{sub}"), 5)
    assert r.status_code == 200
