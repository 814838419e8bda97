"""Several tenants on one Herald (one API, one set of workers), each with its own client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
from temporalio.client import Client

from tests.conftest import Herald, HeraldFactory, unique


@dataclass
class Tenant:
    id: str
    key: str
    http: httpx.AsyncClient
    client: Client

    async def put_subscriber(self, sid: str, **fields: Any) -> None:
        r = await self.http.put(f"/v1/subscribers/{sid}", json=fields)
        assert r.status_code == 200, r.text

    async def put_flow(self, key: str, **body: Any) -> None:
        r = await self.http.put(f"/v1/flows/{key}", json=body)
        assert r.status_code == 200, r.text

    async def publish(self, **body: Any) -> dict[str, Any]:
        r = await self.http.post("/v1/events", json=body)
        assert r.status_code == 202, r.text
        result: dict[str, Any] = r.json()
        return result

    async def wait_event(self, event_id: str, within: float = 30.0) -> dict[str, Any]:
        """Wait until the event is dispatched and every notification's workflow finished."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            r = await self.http.get(f"/v1/events/{event_id}")
            assert r.status_code == 200, r.text
            if r.json()["dispatched_at"] is not None:
                break
            assert loop.time() < deadline, f"{event_id} not dispatched"
            await asyncio.sleep(0.05)
        for n in r.json()["notifications"]:
            handle = self.client.get_workflow_handle(n["workflow_id"])
            await asyncio.wait_for(handle.result(), max(0.1, deadline - loop.time()))
        r = await self.http.get(f"/v1/events/{event_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def secret(self) -> str:
        r = await self.http.get("/v1/webhooks/secret")
        assert r.status_code == 200, r.text
        return str(r.json()["secret"])


async def start_tenants(
    herald_factory: HeraldFactory, count: int, **overrides: Any
) -> tuple[Herald, list[Tenant]]:
    """A Herald whose HERALD_API_KEYS lists ``count`` fresh tenants (so none of them is
    "the" seeded tenant that starts with HERALD_WEBHOOK_SECRET)."""
    pairs = [(unique("key"), unique("tenant")) for _ in range(count)]
    herald = await herald_factory(api_keys=",".join(f"{k}:{t}" for k, t in pairs), **overrides)
    tenants = []
    for key, tenant in pairs:
        http = await herald.stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=herald.app),
                base_url="http://herald.test",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
        )
        tenants.append(Tenant(tenant, key, http, herald.client))
    return herald, tenants
