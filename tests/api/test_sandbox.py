from __future__ import annotations

import base64
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Herald, make_settings, open_api, unique
from tests.fakes.provider import FakeProvider


async def test_unconfigured_channels_deliver_to_the_sandbox(sandbox_herald: Herald) -> None:
    herald = sandbox_herald
    sub = unique("u")
    await herald.put_subscriber(
        sub, email="ada@example.com", phone="+14155550100", push_tokens=["tok"], name="Ada"
    )
    await herald.put_flow(
        "welcome",
        event_type="user.signup",
        steps=[
            {"channel": "email", "subject": "Welcome {{ subscriber.name }}", "text": "Hi"},
            {"channel": "sms", "text": "Hi {{ subscriber.name }}"},
            {"channel": "push", "title": "Hi", "body": "{{ data.plan }}"},
        ],
    )
    event = await herald.wait_event(
        (await herald.publish(type="user.signup", to=[sub], data={"plan": "pro"}))["id"]
    )
    deliveries = event["notifications"][0]["deliveries"]
    assert {d["provider"] for d in deliveries} == {"sandbox"}
    assert {d["status"] for d in deliveries} == {"sent"}

    items = (await herald.http.get("/v1/sandbox/messages")).json()["items"]
    by_channel = {m["channel"]: m for m in items}
    assert by_channel["email"]["to"] == ["ada@example.com"]
    assert by_channel["email"]["content"]["subject"] == "Welcome Ada"
    assert by_channel["sms"]["content"] == {"text": "Hi Ada"}
    assert by_channel["push"]["to"] == ["tok"]
    assert by_channel["push"]["content"]["body"] == "pro"
    only_sms = (await herald.http.get("/v1/sandbox/messages?channel=sms")).json()["items"]
    assert [m["channel"] for m in only_sms] == ["sms"]
    assert (await herald.http.get("/v1/sandbox/messages?channel=fax")).status_code == 422


PRODUCTION = {
    "env": "production",
    "webhook_secret": "whsec_" + base64.b64encode(b"a-production-webhook-secret").decode(),
    "tracking_secret": "a-production-tracking-secret",
    "public_url": "https://herald.test",
}


@pytest.mark.parametrize("sandbox", [False, True])
async def test_the_sandbox_route_is_off_in_production(
    temporal_env: WorkflowEnvironment,
    database_url: str,
    engine: Engine,
    fresh_provider: FakeProvider,
    tmp_path: Path,
    sandbox: bool,
) -> None:
    """Production has a provider on every channel, so the sandbox holds nothing worth showing;
    HERALD_SANDBOX=true (a staging deployment) turns it back on."""
    settings, key, _ = make_settings(
        database_url,
        **fresh_provider.settings_overrides(tmp_path),
        **PRODUCTION,
        sandbox=sandbox,
    )
    async with AsyncExitStack() as stack:
        _, http = await open_api(stack, settings, key, temporal_env.client)
        r = await http.get("/v1/sandbox/messages")
        assert r.status_code == (200 if sandbox else 404), r.text
        if not sandbox:
            assert "HERALD_SANDBOX=true" in r.json()["detail"]
        # The rest of the API is on either way.
        assert (await http.get("/v1/subscribers/nobody")).status_code == 404
