"""Per-tenant webhook secrets and their rotation, verified by the standardwebhooks package."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from store.db import session_scope
from store.webhook_secrets import WebhookSecret
from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.provider import FakeProvider, Recorded
from tests.fakes.tenants import Tenant, start_tenants


def verifies(secret: str, hook: Recorded) -> bool:
    try:
        Webhook(secret).verify(hook.body, hook.headers)
    except WebhookVerificationError:
        return False
    return True


async def send_one(who: Herald | Tenant, provider: FakeProvider, flow: str) -> Recorded:
    """One webhook delivery to a fresh subscriber; the request the receiver got."""
    sub = unique("u")
    await who.put_subscriber(sub, webhook_url=provider.webhook_url(sub))
    await who.put_flow(flow, event_type=f"{flow}.happened", steps=[{"channel": "webhook"}])
    event = await who.wait_event((await who.publish(type=f"{flow}.happened", to=[sub]))["id"])
    (d,) = event["notifications"][0]["deliveries"]
    assert d["status"] == "delivered", d
    [hook] = [r for r in provider.requests("webhook") if r.path == f"/hooks/{sub}"]
    return hook


async def test_the_seeded_tenant_starts_with_herald_webhook_secret(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    r = await herald.http.get("/v1/webhooks/secret")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["secret"] == herald.settings.webhook_secret.get_secret_value()
    assert body["previous_expires_at"] is None
    hook = await send_one(herald, fresh_provider, "seeded")
    assert verifies(body["secret"], hook)


async def test_rotation_signs_with_both_secrets_during_the_grace_only(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(webhook_secret_grace=timedelta(hours=1))
    old = herald.settings.webhook_secret.get_secret_value()

    r = await herald.http.post("/v1/webhooks/secret/rotate")
    assert r.status_code == 200, r.text
    rotated = r.json()
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old
    expires = datetime.fromisoformat(rotated["previous_expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    assert (await herald.http.get("/v1/webhooks/secret")).json()["secret"] == new

    during = await send_one(herald, fresh_provider, "during")
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert verifies(new, during)
    assert verifies(old, during)

    # The grace ends (moved into the past rather than waited for).
    with session_scope(herald.engine) as s:
        s.execute(
            update(WebhookSecret)
            .where(WebhookSecret.tenant_id == herald.tenant)  # type: ignore[arg-type]
            .values(previous_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert (await herald.http.get("/v1/webhooks/secret")).json()["previous_expires_at"] is None

    after = await send_one(herald, fresh_provider, "after")
    assert verifies(new, after)
    assert not verifies(old, after)


async def test_rotating_twice_ends_the_oldest_secret_at_once(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(webhook_secret_grace=timedelta(hours=1))
    first = herald.settings.webhook_secret.get_secret_value()
    second = (await herald.http.post("/v1/webhooks/secret/rotate")).json()["secret"]
    third = (await herald.http.post("/v1/webhooks/secret/rotate")).json()["secret"]

    hook = await send_one(herald, fresh_provider, "twice")

    assert [verifies(s, hook) for s in (first, second, third)] == [False, True, True]


async def test_no_grace_means_the_old_secret_stops_at_once(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(webhook_secret_grace=timedelta(0))
    old = herald.settings.webhook_secret.get_secret_value()
    rotated = (await herald.http.post("/v1/webhooks/secret/rotate")).json()
    assert rotated["previous_expires_at"] is None

    hook = await send_one(herald, fresh_provider, "nograce")

    assert verifies(rotated["secret"], hook)
    assert not verifies(old, hook)


async def test_each_tenant_signs_with_its_own_secret(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald, (a, b) = await start_tenants(herald_factory, 2)

    # B's first webhook goes out before anyone asked for B's secret: the worker makes it.
    b_hook = await send_one(b, fresh_provider, "isolation")
    a_secret, b_secret = await a.secret(), await b.secret()
    a_hook = await send_one(a, fresh_provider, "isolation")

    shared = herald.settings.webhook_secret.get_secret_value()
    assert len({a_secret, b_secret, shared}) == 3
    assert verifies(b_secret, b_hook)
    assert not verifies(a_secret, b_hook)
    assert not verifies(shared, b_hook)
    assert verifies(a_secret, a_hook)
    assert not verifies(b_secret, a_hook)

    # Rotating A's secret leaves B's alone.
    await a.http.post("/v1/webhooks/secret/rotate")
    assert await b.secret() == b_secret


@pytest.mark.parametrize(("method", "path"), [("GET", "secret"), ("POST", "secret/rotate")])
async def test_the_secret_routes_need_an_api_key(herald: Herald, method: str, path: str) -> None:
    r = await herald.http.request(
        method, f"/v1/webhooks/{path}", headers={"Authorization": "Bearer nope"}
    )
    assert r.status_code == 401
