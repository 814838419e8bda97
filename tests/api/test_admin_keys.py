"""The admin API manages keys: create (plaintext once), list (never plaintext), revoke."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from core.settings import Settings
from store import api_keys as q
from store.api_keys import KEY_CACHE_SECONDS
from store.db import session_scope
from tests.conftest import make_settings, open_api, recorded_statements, unique

ADMIN_KEY = "test-admin-key-0123456789abcdef"


class FakeClock:
    """Wall-clock seconds that only move when a test moves them."""

    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    app: FastAPI
    http: httpx.AsyncClient
    tenant: str
    key: str
    clock: FakeClock

    def as_admin(self, key: str = ADMIN_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def status_with(self, key: str) -> int:
        r = await self.http.get("/v1/flows", headers={"Authorization": f"Bearer {key}"})
        return r.status_code


@pytest.fixture
async def api_factory(temporal_env: WorkflowEnvironment, database_url: str) -> AsyncIterator[Any]:
    """The API alone (no workers), its key cache on a clock the test steps."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Api:
            target = temporal_env.client.service_client.config.target_host
            settings, key, tenant = make_settings(
                database_url, temporal_address=target, **overrides
            )
            app, http = await open_api(stack, settings, key, temporal_env.client)
            clock = FakeClock()
            app.state.key_auth.clock = clock
            return Api(app, http, tenant, key, clock)

        yield start


async def create(api: Api, tenant: str, name: str = "ci") -> dict[str, Any]:
    r = await api.http.post(
        "/v1/admin/keys", json={"tenant": tenant, "name": name}, headers=api.as_admin()
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_admin_routes_are_404_without_an_admin_key(api_factory: Any) -> None:
    api = await api_factory()
    for method, path in (
        ("POST", "/v1/admin/keys"),
        ("GET", "/v1/admin/keys"),
        ("DELETE", "/v1/admin/keys/key_0123"),
    ):
        for headers in ({}, api.as_admin(), {"Authorization": f"Bearer {api.key}"}):
            r = await api.http.request(
                method, path, json={"tenant": "t", "name": "n"}, headers=headers
            )
            assert r.status_code == 404, (method, path, headers)


async def test_admin_routes_refuse_any_other_key(api_factory: Any) -> None:
    api = await api_factory(admin_key=ADMIN_KEY)
    for headers in (
        {"Authorization": ""},
        {"Authorization": f"Bearer {api.key}"},  # a tenant's key is not an admin key
        api.as_admin(ADMIN_KEY + "x"),
        {"Authorization": f"Basic {ADMIN_KEY}"},
    ):
        r = await api.http.get("/v1/admin/keys", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
    assert (await api.http.get("/v1/admin/keys", headers=api.as_admin())).status_code == 200


async def test_create_list_use_and_revoke(api_factory: Any) -> None:
    api = await api_factory(admin_key=ADMIN_KEY)
    tenant = unique("acme")
    created = await create(api, tenant)
    plaintext = created["key"]
    assert plaintext.startswith("hk_") and len(plaintext) > 40
    assert created["prefix"] == plaintext[:11]
    assert created["tenant"] == tenant and created["name"] == "ci"
    assert created["seeded"] is False and created["revoked_at"] is None
    assert "key_hash" not in created

    # The new tenant exists and the key is its own.
    assert await api.status_with(plaintext) == 200
    r = await api.http.put(
        "/v1/subscribers/ada",
        json={"email": "a@example.com"},
        headers={"Authorization": f"Bearer {plaintext}"},
    )
    assert r.status_code == 200
    assert (await api.http.get("/v1/subscribers/ada")).status_code == 404  # not api's tenant

    r = await api.http.get("/v1/admin/keys", params={"tenant": tenant}, headers=api.as_admin())
    assert r.status_code == 200
    assert plaintext not in r.text and "key_hash" not in r.text
    (listed,) = r.json()
    assert listed["id"] == created["id"] and listed["prefix"] == created["prefix"]
    assert "key" not in listed

    # The key is cached by the calls above; a revoke in this process still ends it at once.
    r = await api.http.delete(f"/v1/admin/keys/{created['id']}", headers=api.as_admin())
    assert r.status_code == 200
    revoked = r.json()
    assert revoked["revoked_at"] is not None and revoked["revoked_reason"] == "revoked"
    assert await api.status_with(plaintext) == 401

    r = await api.http.get("/v1/admin/keys", params={"tenant": tenant}, headers=api.as_admin())
    assert r.json() == []
    r = await api.http.get(
        "/v1/admin/keys",
        params={"tenant": tenant, "include_revoked": "true"},
        headers=api.as_admin(),
    )
    assert [k["id"] for k in r.json()] == [created["id"]]

    again = await api.http.delete(f"/v1/admin/keys/{created['id']}", headers=api.as_admin())
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked["revoked_at"]
    missing = await api.http.delete("/v1/admin/keys/key_does_not_exist", headers=api.as_admin())
    assert missing.status_code == 404


async def test_bad_input_is_422_naming_the_field_and_stores_nothing(api_factory: Any) -> None:
    api = await api_factory(admin_key=ADMIN_KEY)
    tenant = unique("acme")
    for body, field in (
        ({"tenant": "a.b", "name": "ci"}, "tenant"),
        ({"tenant": "", "name": "ci"}, "tenant"),
        ({"tenant": tenant, "name": "  "}, "name"),
        ({"tenant": tenant, "name": "x" * 101}, "name"),
        ({"tenant": tenant}, "name"),
        ({"tenant": tenant, "name": "ci", "seeded": True}, "seeded"),
    ):
        r = await api.http.post("/v1/admin/keys", json=body, headers=api.as_admin())
        assert r.status_code == 422, body
        assert [e["loc"] for e in r.json()["detail"]] == [["body", field]], r.text
    r = await api.http.get("/v1/admin/keys", params={"tenant": "a.b"}, headers=api.as_admin())
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "tenant"]
    r = await api.http.get(
        "/v1/admin/keys",
        params={"tenant": tenant, "include_revoked": "true"},
        headers=api.as_admin(),
    )
    assert r.json() == []


async def test_last_used_is_written_at_most_once_a_minute(api_factory: Any) -> None:
    api = await api_factory(admin_key=ADMIN_KEY)
    created = await create(api, unique("acme"))
    engine: Engine = api.app.state.key_auth.engine  # key lookups have a pool of their own
    with recorded_statements(engine) as statements:

        def writes() -> int:
            return sum(s.lstrip().upper().startswith("UPDATE TENANT_API_KEYS") for s in statements)

        async def last_used() -> str | None:
            r = await api.http.get(
                "/v1/admin/keys",
                params={"tenant": created["tenant"]},
                headers=api.as_admin(),
            )
            value: str | None = r.json()[0]["last_used_at"]
            return value

        assert await last_used() is None
        for _ in range(5):
            assert await api.status_with(created["key"]) == 200
        first = await last_used()
        assert first is not None and writes() == 1

        api.clock.now += 30  # the cache expired and was re-read: still no second write
        for _ in range(3):
            assert await api.status_with(created["key"]) == 200
        assert await last_used() == first and writes() == 1

        api.clock.now += 31
        assert await api.status_with(created["key"]) == 200
        later = await last_used()
        assert later is not None and later > first and writes() == 2


async def test_a_cached_key_is_answered_on_the_event_loop(
    api_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a lookup or a last-used write goes to the thread pool: a hop per request cost
    the API-alone burst about 8 ms at p99 (make bench)."""
    api = await api_factory(admin_key=ADMIN_KEY)
    created = await create(api, unique("acme"))
    auth = api.app.state.key_auth
    loop_thread = threading.get_ident()
    slow: list[int] = []
    lookup = auth.tenant_for

    def counted(key: str) -> str | None:
        slow.append(threading.get_ident())
        return lookup(key)

    monkeypatch.setattr(auth, "tenant_for", counted)
    for _ in range(5):
        assert await api.status_with(created["key"]) == 200
    assert len(slow) == 1 and slow[0] != loop_thread  # the first request looked it up

    api.clock.now += KEY_CACHE_SECONDS  # expired: looked up again, once
    for _ in range(3):
        assert await api.status_with(created["key"]) == 200
    api.clock.now += 60  # expired, and last_used_at is due: one more trip
    assert await api.status_with(created["key"]) == 200
    assert len(slow) == 3


async def test_a_revoke_elsewhere_ends_the_key_within_the_cache_bound(
    api_factory: Any, engine: Engine
) -> None:
    """The CLI or another API process revokes: this process stops trusting its cache soon."""
    api = await api_factory(admin_key=ADMIN_KEY)
    created = await create(api, unique("acme"))
    assert await api.status_with(created["key"]) == 200  # now cached here
    with session_scope(engine) as session:
        assert q.revoke_key(session, created["id"]) is not None

    api.clock.now += KEY_CACHE_SECONDS - 1
    assert await api.status_with(created["key"]) == 200  # still trusted, within the bound
    api.clock.now += 1
    assert await api.status_with(created["key"]) == 401


def test_admin_key_must_be_long_and_empty_means_off(database_url: str) -> None:
    def settings(**values: Any) -> Settings:
        return Settings.model_validate({"database_url": database_url, **values})

    with pytest.raises(ValidationError, match="HERALD_ADMIN_KEY must be at least 24"):
        settings(admin_key="short-admin-key")
    assert settings(admin_key="").admin_key is None
    assert settings().admin_key is None


async def test_an_expired_key_cache_does_not_starve_concurrent_requests_of_connections(
    api_factory: Any,
) -> None:
    """Routes open their session before they authenticate. With the key lookups on the same
    pool, as many requests as the pool holds each held a connection and waited for another
    (QueuePool timeout, then 500s), seen in make bench's tracking scenario."""
    api = await api_factory()
    assert await api.status_with(api.key) == 200  # the key is cached
    api.clock.now += KEY_CACHE_SECONDS + 1  # every request now looks it up
    codes = await asyncio.wait_for(
        asyncio.gather(*(api.status_with(api.key) for _ in range(40))), 20
    )
    assert codes == [200] * 40
