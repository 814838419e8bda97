"""Topics over HTTP: upsert, counts, adding and removing members, opt-outs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from core.audience import Audience
from store.db import session_scope
from store.topics import audience_page
from tests.conftest import make_settings, open_api, unique


@dataclass
class Api:
    """The API alone (no workers): topics never touch Temporal."""

    http: httpx.AsyncClient
    tenant: str
    engine: Engine


@pytest.fixture
async def api(
    temporal_env: WorkflowEnvironment, engine: Engine, database_url: str
) -> AsyncIterator[Api]:
    client = temporal_env.client
    settings, key, tenant = make_settings(
        database_url, temporal_address=client.service_client.config.target_host
    )
    async with AsyncExitStack() as stack:
        _, http = await open_api(stack, settings, key, client)
        yield Api(http, tenant, engine)


async def _import(api: Api, ids: list[str]) -> None:
    r = await api.http.post("/v1/subscribers/bulk", json={"subscribers": [{"id": i} for i in ids]})
    assert r.status_code == 200, r.text
    assert r.json()["invalid"] == []


async def test_topic_upsert_get_and_list_with_counts(api: Api) -> None:
    r = await api.http.put("/v1/topics/beta", json={"name": "Beta testers"})
    assert r.status_code == 200, r.text
    first = r.json()
    assert (first["key"], first["name"], first["subscriber_count"]) == ("beta", "Beta testers", 0)
    renamed = (await api.http.put("/v1/topics/beta", json={"name": "Beta"})).json()
    assert renamed["name"] == "Beta" and renamed["created_at"] == first["created_at"]
    assert renamed["updated_at"] >= first["updated_at"]
    await api.http.put("/v1/topics/alpha", json={"name": "Alpha"})
    await api.http.put("/v1/topics/empty", json={"name": "Nobody yet"})

    await _import(api, ["u1", "u2", "u3"])
    await api.http.post("/v1/topics/beta/subscribers", json={"subscribers": ["u1", "u2", "u3"]})
    await api.http.post("/v1/topics/alpha/subscribers", json={"subscribers": ["u2"]})

    got = (await api.http.get("/v1/topics/beta")).json()
    assert (got["name"], got["subscriber_count"]) == ("Beta", 3)
    listed = (await api.http.get("/v1/topics")).json()
    assert [(t["key"], t["subscriber_count"]) for t in listed] == [
        ("alpha", 1),
        ("beta", 3),
        ("empty", 0),
    ]

    assert (await api.http.get("/v1/topics/nope")).status_code == 404
    assert (await api.http.put("/v1/topics/beta", json={"name": ""})).status_code == 422
    assert (await api.http.put("/v1/topics/bad key!", json={"name": "x"})).status_code == 422


async def test_add_ten_thousand_members_in_one_call_idempotently(api: Api) -> None:
    ids = [f"m{i:05d}" for i in range(10_000)]
    await _import(api, ids)
    await api.http.put("/v1/topics/all", json={"name": "Everyone"})
    r = await api.http.post("/v1/topics/all/subscribers", json={"subscribers": ids})
    assert r.status_code == 200, r.text
    assert r.json() == {"added": 10_000, "subscriber_count": 10_000}

    again = await api.http.post("/v1/topics/all/subscribers", json={"subscribers": ids[:500]})
    assert again.json() == {"added": 0, "subscriber_count": 10_000}
    await _import(api, ["late"])
    more = await api.http.post(
        "/v1/topics/all/subscribers", json={"subscribers": ["late", "late", ids[0]]}
    )
    assert more.json() == {"added": 1, "subscriber_count": 10_001}

    too_many = await api.http.post("/v1/topics/all/subscribers", json={"subscribers": [*ids, "x"]})
    assert too_many.status_code == 422
    assert (await api.http.get("/v1/topics/all")).json()["subscriber_count"] == 10_001


async def test_unknown_ids_are_422_by_index_and_nothing_is_added(api: Api) -> None:
    await _import(api, ["known-1", "known-2"])
    await api.http.put("/v1/topics/beta", json={"name": "Beta"})
    r = await api.http.post(
        "/v1/topics/beta/subscribers",
        json={"subscribers": ["known-1", "ghost", "known-2", "also-ghost"]},
    )
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [
        ["body", "subscribers", 1],
        ["body", "subscribers", 3],
    ]
    assert "ghost" in r.json()["detail"][0]["msg"]
    assert (await api.http.get("/v1/topics/beta")).json()["subscriber_count"] == 0

    missing = await api.http.post("/v1/topics/nope/subscribers", json={"subscribers": ["known-1"]})
    assert missing.status_code == 404
    empty = await api.http.post("/v1/topics/beta/subscribers", json={"subscribers": []})
    assert empty.status_code == 422


async def test_delete_member(api: Api) -> None:
    await _import(api, ["a", "b"])
    await api.http.put("/v1/topics/beta", json={"name": "Beta"})
    await api.http.post("/v1/topics/beta/subscribers", json={"subscribers": ["a", "b"]})
    r = await api.http.delete("/v1/topics/beta/subscribers/a")
    assert r.status_code == 204
    assert (await api.http.get("/v1/topics/beta")).json()["subscriber_count"] == 1
    assert (await api.http.delete("/v1/topics/beta/subscribers/a")).status_code == 404
    assert (await api.http.delete("/v1/topics/nope/subscribers/b")).status_code == 404
    with session_scope(api.engine) as session:
        page = audience_page(session, api.tenant, Audience(topic="beta"), None, 10)
    assert page.subscriber_ids == ["b"]


async def test_opt_out_through_preferences_reaches_the_audience(api: Api) -> None:
    ids = [unique("s") for _ in range(4)]
    await _import(api, ids)
    await api.http.put("/v1/topics/beta", json={"name": "Beta"})
    await api.http.post("/v1/topics/beta/subscribers", json={"subscribers": ids})
    r = await api.http.put(
        f"/v1/subscribers/{ids[0]}/preferences", json={"topics": {"beta": False}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["topics"] == {"beta": False}
    await api.http.put(f"/v1/subscribers/{ids[1]}/preferences", json={"topics": {"beta": True}})
    bad = await api.http.put(
        f"/v1/subscribers/{ids[2]}/preferences", json={"topics": {"beta": "maybe"}}
    )
    assert bad.status_code == 422
    with session_scope(api.engine) as session:
        page = audience_page(session, api.tenant, Audience(topic="beta"), None, 2)
        rest = audience_page(session, api.tenant, Audience(topic="beta"), page.next_after, 2)
    assert rest.next_after is None
    assert page.opted_out + rest.opted_out == [ids[0]]
    assert sorted(page.subscriber_ids + rest.subscriber_ids) == sorted(ids[1:])
