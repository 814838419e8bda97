"""Every /v1 route needs a key; one tenant never sees another's data."""

from __future__ import annotations

from contextlib import AsyncExitStack

from sqlalchemy.engine import Engine
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from store import api_keys as q
from store.db import session_scope
from store.tenants import ensure_api_keys
from tests.conftest import HeraldFactory, make_settings, open_api, unique


async def test_missing_or_wrong_key_is_401(herald_factory: HeraldFactory) -> None:
    herald = await herald_factory()
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic abc"},
    ):
        r = await herald.http.get("/v1/flows", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
    r = await herald.http.post("/v1/events", json={}, headers={"Authorization": ""})
    assert r.status_code == 401


async def test_other_tenants_resources_are_404(herald_factory: HeraldFactory) -> None:
    a = await herald_factory()
    b = await herald_factory()
    sub = unique("u")
    await a.put_subscriber(sub, email="a@example.com")
    await a.put_flow(
        "welcome",
        event_type="user.signup",
        steps=[{"channel": "email", "subject": "Hi", "text": "x"}],
    )
    accepted = await a.publish(type="user.signup", to=[sub])

    # b's key against a's app (same database): nothing of a's is visible.
    b_key = {"Authorization": f"Bearer {b.api_key}"}
    assert (await a.http.get(f"/v1/subscribers/{sub}", headers=b_key)).status_code == 404
    assert (await a.http.get("/v1/flows/welcome", headers=b_key)).status_code == 404
    assert (await a.http.get(f"/v1/events/{accepted['id']}", headers=b_key)).status_code == 404
    assert (await a.http.get("/v1/flows", headers=b_key)).json() == []
    r = await a.http.post("/v1/events", json={"type": "user.signup", "to": [sub]}, headers=b_key)
    assert r.status_code == 422  # a's subscriber does not exist for b


async def test_healthz_needs_no_key(herald_factory: HeraldFactory) -> None:
    herald = await herald_factory()
    r = await herald.http.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok", "temporal": "ok"}


async def test_herald_api_keys_seeds_keys_and_unlisting_one_revokes_it(
    temporal_env: WorkflowEnvironment, database_url: str, engine: Engine
) -> None:
    """Each start makes HERALD_API_KEYS true, leaving CLI/admin-made keys alone.

    This test turns on what the suite turns off (``api_keys_revoke_unlisted``): its starts
    revoke every other seeded key in the test database, of tests that have finished.
    """
    tenant = unique("tenant")
    k1, k2 = unique("seeded-key-one"), unique("seeded-key-two")
    with session_scope(engine) as session:
        made = q.create_key(session, q.KeyCreate(tenant=tenant, name="ci"))

    async def start(keys: str) -> dict[str, int]:
        """Start the API with these keys; how each key fares against it."""
        settings, _, _ = make_settings(
            database_url,
            temporal_address=temporal_env.client.service_client.config.target_host,
            api_keys=keys,
            api_keys_revoke_unlisted=True,
        )
        async with AsyncExitStack() as stack:
            _app, http = await open_api(stack, settings, k1, temporal_env.client)
            codes = {}
            for name, key in (("k1", k1), ("k2", k2), ("made", made.key)):
                r = await http.get("/v1/flows", headers={"Authorization": f"Bearer {key}"})
                codes[name] = r.status_code
            return codes

    assert await start(f"{k1}:{tenant},{k2}:{tenant}") == {"k1": 200, "k2": 200, "made": 200}
    assert await start(f"{k1}:{tenant}") == {"k1": 200, "k2": 401, "made": 200}
    with session_scope(engine) as session:
        listed = q.list_keys(session, tenant, include_revoked=True)
    assert sorted((k.seeded, k.revoked_reason or "-") for k in listed) == [
        (False, "-"),  # the CLI/admin-made key is untouched
        (True, "-"),
        (True, "unlisted"),
    ]
    # Listed again, an unlisted key comes back; one revoked on purpose stays revoked.
    assert await start(f"{k1}:{tenant},{k2}:{tenant}") == {"k1": 200, "k2": 200, "made": 200}
    with session_scope(engine) as session:
        seeded = [k for k in q.list_keys(session, tenant) if k.seeded]
        assert len(seeded) == 2 and {k.name for k in seeded} == {"HERALD_API_KEYS"}
        q.revoke_key(session, seeded[0].id)
    codes = await start(f"{k1}:{tenant},{k2}:{tenant}")
    assert sorted(codes.values()) == [200, 200, 401]
    # An empty list revokes every seeded key.
    assert await start("") == {"k1": 401, "k2": 401, "made": 200}


def test_seeded_keys_are_stored_hashed_with_a_short_prefix(engine: Engine) -> None:
    tenant = unique("tenant")
    long_key, short_key = "seeded-" + "x" * 30, unique("k")
    with session_scope(engine) as session:
        ensure_api_keys(session, {long_key: tenant, short_key: tenant})
        rows = session.exec(select(q.ApiKeyRecord).where(q.ApiKeyRecord.tenant_id == tenant)).all()
    assert sorted(r.prefix for r in rows) == ["", "seed"]
    assert {r.key_hash for r in rows} == {q.hash_key(long_key), q.hash_key(short_key)}
    assert all(r.seeded and r.name == "HERALD_API_KEYS" for r in rows)
