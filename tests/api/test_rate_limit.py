"""HERALD_TENANT_RATE_LIMIT: a token bucket per tenant, 429 with Retry-After when empty."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from api.ratelimit import TenantRateLimiter, retry_after_seconds
from core.settings import Settings
from tests.conftest import make_settings, open_api, unique


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = TenantRateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # buckets are per tenant
    clock.now += 0.25
    assert limiter.acquire("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(0.5)
    clock.now += 3600  # a quiet hour saves up no more than the burst
    assert [limiter.acquire("a") for _ in range(4)][-1] == pytest.approx(0.5)


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after_seconds(0.001) == 1
    assert retry_after_seconds(1.0) == 1
    assert retry_after_seconds(1.2) == 2


def test_burst_defaults_to_one_seconds_worth() -> None:
    assert Settings(tenant_rate_limit=2.5).tenant_rate_capacity == 3
    assert Settings(tenant_rate_limit=0.2).tenant_rate_capacity == 1
    assert Settings(tenant_rate_limit=5, tenant_rate_burst=20).tenant_rate_capacity == 20
    assert TenantRateLimiter.from_settings(Settings()) is None


@pytest.fixture
async def api_factory(temporal_env: WorkflowEnvironment, database_url: str) -> AsyncIterator[Any]:
    """The API alone, with two tenants' keys; its limiter on a clock the test steps."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> tuple[FastAPI, httpx.AsyncClient, str, FakeClock]:
            target = temporal_env.client.service_client.config.target_host
            key, other_key = unique("key"), unique("key")
            keys = f"{key}:{unique('tenant')},{other_key}:{unique('tenant')}"
            settings, _, _ = make_settings(
                database_url, temporal_address=target, api_keys=keys, **overrides
            )
            app, http = await open_api(stack, settings, key, temporal_env.client)
            clock = FakeClock()
            if app.state.rate_limiter is not None:
                app.state.rate_limiter.clock = clock
            return app, http, other_key, clock

        yield start


async def test_a_tenant_over_its_limit_gets_429_and_others_do_not(api_factory: Any) -> None:
    _app, http, other_key, clock = await api_factory(tenant_rate_limit=2, tenant_rate_burst=2)
    assert [(await http.get("/v1/flows")).status_code for _ in range(2)] == [200, 200]

    r = await http.get("/v1/flows")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.json()["detail"] == {
        "message": "tenant rate limit exceeded",
        "limit_per_second": 2.0,
        "burst": 2,
        "retry_after_seconds": 1,
    }
    # Every authenticated route shares the bucket, writes included.
    r = await http.put("/v1/subscribers/ada", json={"email": "ada@example.com"})
    assert r.status_code == 429

    other = {"Authorization": f"Bearer {other_key}"}
    assert [(await http.get("/v1/flows", headers=other)).status_code for _ in range(2)] == [
        200,
        200,
    ]

    clock.now += 0.5  # one token back
    assert (await http.get("/v1/flows")).status_code == 200
    assert (await http.get("/v1/flows")).status_code == 429
    clock.now += 1.0
    assert [(await http.get("/v1/flows")).status_code for _ in range(3)] == [200, 200, 429]


async def test_retry_after_says_when_a_token_is_back(api_factory: Any) -> None:
    _app, http, _other, clock = await api_factory(tenant_rate_limit=0.25)
    assert (await http.get("/v1/flows")).status_code == 200
    r = await http.get("/v1/flows")
    assert r.status_code == 429 and r.headers["retry-after"] == "4"
    clock.now += 3.5
    r = await http.get("/v1/flows")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    clock.now += 0.5
    assert (await http.get("/v1/flows")).status_code == 200


async def test_unauthenticated_requests_take_no_token(api_factory: Any) -> None:
    _app, http, _other, _clock = await api_factory(tenant_rate_limit=1)
    for _ in range(5):
        r = await http.get("/v1/flows", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
    assert (await http.get("/v1/flows")).status_code == 200


async def test_no_limit_when_unset(api_factory: Any) -> None:
    app, http, _other, _clock = await api_factory()
    assert app.state.rate_limiter is None
    for _ in range(30):
        assert (await http.get("/v1/flows")).status_code == 200
