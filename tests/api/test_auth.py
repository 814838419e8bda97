"""Every /v1 route needs a key; one tenant never sees another's data."""

from __future__ import annotations

from tests.conftest import HeraldFactory, unique


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
