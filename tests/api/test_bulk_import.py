"""POST /v1/subscribers/bulk: per-row validation, upsert with PUT's semantics, 10,000 a call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store.db import session_scope
from store.models import Subscriber
from tests.conftest import make_settings, open_api


@pytest.fixture
async def tenant_http(
    temporal_env: WorkflowEnvironment, engine: Engine, database_url: str
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The API alone, for a fresh tenant: bulk import never touches Temporal."""
    client = temporal_env.client
    settings, key, tenant = make_settings(
        database_url, temporal_address=client.service_client.config.target_host
    )
    async with AsyncExitStack() as stack:
        _, api = await open_api(stack, settings, key, client)
        yield tenant, api


@pytest.fixture
def http(tenant_http: tuple[str, httpx.AsyncClient]) -> httpx.AsyncClient:
    return tenant_http[1]


async def test_invalid_rows_are_named_and_valid_rows_kept(http: httpx.AsyncClient) -> None:
    r = await http.put("/v1/subscribers/old", json={"email": "old@example.com", "locale": "de"})
    assert r.status_code == 200, r.text
    rows = [
        {"id": "new-1", "email": "n1@example.com", "data": {"plan": "pro"}},
        {"id": "bad-email", "email": "not-an-address"},
        {"id": "old", "name": "Old Timer"},  # only the name changes
        {"id": "bad-two", "phone": "12345", "timezone": "Mars/Olympus"},
        {"email": "noid@example.com"},
        "not an object",
        {"id": "bad id!"},
        {"id": "new-2", "phone": "+14155550100", "locale": "pt-BR"},
    ]
    r = await http.post("/v1/subscribers/bulk", json={"subscribers": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["created"] == ["new-1", "new-2"]
    assert body["updated"] == ["old"]
    named = {(e["index"], e["field"]) for e in body["invalid"]}
    assert named == {
        (1, "email"),
        (3, "phone"),
        (3, "timezone"),
        (4, "id"),
        (5, None),
        (6, "id"),
    }
    assert all(
        e["msg"] and e["loc"][:1] == ([e["field"]] if e["field"] else []) for e in body["invalid"]
    )

    old = (await http.get("/v1/subscribers/old")).json()
    assert (old["email"], old["locale"], old["name"]) == ("old@example.com", "de", "Old Timer")
    new1 = (await http.get("/v1/subscribers/new-1")).json()
    assert (new1["email"], new1["data"], new1["locale"]) == (
        "n1@example.com",
        {"plan": "pro"},
        "en",
    )
    new2 = (await http.get("/v1/subscribers/new-2")).json()
    assert (new2["phone"], new2["locale"]) == ("+14155550100", "pt-BR")
    for sid in ("bad-email", "bad-two"):
        assert (await http.get(f"/v1/subscribers/{sid}")).status_code == 404


async def test_bulk_rows_follow_put_semantics(http: httpx.AsyncClient) -> None:
    first = [
        {"id": "a", "email": "a@example.com", "push_tokens": ["t1", "t1"], "data": {"x": 1}},
        {"id": "b", "name": "Bee", "webhook_url": "https://hooks.example.com/b"},
    ]
    r = await http.post("/v1/subscribers/bulk", json={"subscribers": first})
    assert r.json()["created"] == ["a", "b"]
    second = [
        {"id": "a", "email": None},  # null clears, as with PUT
        {"id": "b", "locale": "fr"},
        {"id": "a", "name": "Ay"},  # a repeated id merges, later fields winning
    ]
    r = await http.post("/v1/subscribers/bulk", json={"subscribers": second})
    assert r.json() == {"created": [], "updated": ["a", "b"], "invalid": []}
    a = (await http.get("/v1/subscribers/a")).json()
    assert (a["email"], a["name"], a["push_tokens"], a["data"]) == (None, "Ay", ["t1"], {"x": 1})
    b = (await http.get("/v1/subscribers/b")).json()
    assert (b["name"], b["locale"], b["webhook_url"]) == (
        "Bee",
        "fr",
        "https://hooks.example.com/b",
    )


async def test_ten_thousand_rows_in_one_call(
    tenant_http: tuple[str, httpx.AsyncClient], engine: Engine
) -> None:
    tenant, http = tenant_http
    rows = [
        {"id": f"r{i:05d}", "email": f"r{i}@example.com", "data": {"n": i}} for i in range(10_000)
    ]
    rows[1234]["email"] = "broken"
    r = await http.post("/v1/subscribers/bulk", json={"subscribers": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["created"]) == 9_999 and body["updated"] == []
    assert [(e["index"], e["field"]) for e in body["invalid"]] == [(1234, "email")]

    rows[1234]["email"] = "fixed@example.com"
    again = [{"id": row["id"], "locale": "de"} for row in rows]
    r = await http.post("/v1/subscribers/bulk", json={"subscribers": again})
    body = r.json()
    assert len(body["updated"]) == 9_999 and body["created"] == ["r01234"]
    last = (await http.get("/v1/subscribers/r09999")).json()
    assert (last["email"], last["locale"], last["data"]) == ("r9999@example.com", "de", {"n": 9999})

    too_many = [*again, {"id": "one-more"}]
    r = await http.post("/v1/subscribers/bulk", json={"subscribers": too_many})
    assert r.status_code == 422
    assert (await http.get("/v1/subscribers/one-more")).status_code == 404
    assert (await http.post("/v1/subscribers/bulk", json={"subscribers": []})).status_code == 422
    with session_scope(engine) as session:
        stmt = select(func.count()).where(Subscriber.tenant_id == tenant)
        assert session.exec(stmt).one() == 10_000
