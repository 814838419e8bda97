"""A broadcast's batched webhooks are signed with their tenant's own secret too."""

from __future__ import annotations

import asyncio

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.conftest import HeraldFactory, unique
from tests.fakes.provider import FakeProvider
from tests.fakes.tenants import start_tenants


async def test_broadcast_webhooks_verify_with_the_tenants_secret(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    # Two tenants listed: neither starts with HERALD_WEBHOOK_SECRET, each has its own.
    herald, (tenant, _) = await start_tenants(herald_factory, 2)
    secret = await tenant.secret()
    shared = herald.settings.webhook_secret.get_secret_value()

    prefix = unique("m")
    members = [
        {"id": f"{prefix}-{i}", "webhook_url": fresh_provider.webhook_url(f"{prefix}-{i}")}
        for i in range(5)
    ]
    r = await tenant.http.post("/v1/subscribers/bulk", json={"subscribers": members})
    assert r.status_code == 200, r.text
    assert (await tenant.http.put("/v1/topics/hooks", json={"name": "hooks"})).status_code == 200
    r = await tenant.http.post(
        "/v1/topics/hooks/subscribers", json={"subscribers": [m["id"] for m in members]}
    )
    assert r.status_code in (200, 201, 202), r.text
    await tenant.put_flow("ping", event_type="b.ping", steps=[{"channel": "webhook"}])

    r = await tenant.http.post(
        "/v1/broadcasts", json={"flow": "ping", "audience": {"topic": "hooks"}}
    )
    assert r.status_code == 202, r.text
    workflow_id = r.json()["workflow_id"]
    await asyncio.wait_for(herald.client.get_workflow_handle(workflow_id).result(), 60)
    hooks = fresh_provider.wait_for("webhook", 5, timeout=30)

    assert len(hooks) == 5
    for hook in hooks:
        Webhook(secret).verify(hook.body, hook.headers)
        try:
            Webhook(shared).verify(hook.body, hook.headers)
        except WebhookVerificationError:
            continue
        raise AssertionError("a broadcast webhook verified with the shared secret")
