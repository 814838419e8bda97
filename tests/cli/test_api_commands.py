"""The commands that act as a tenant, over real HTTP to a real API with real workers.

The API is served by uvicorn on a loopback port (the ``herald`` fixtures' ASGI transport
cannot be reached by the CLI's own httpx client); each command runs in a thread, so the
test's event loop keeps serving the API and the workers meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from typer.testing import CliRunner, Result

from cli.main import app
from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.net import free_port
from tests.fakes.provider import FakeProvider

runner = CliRunner()
FAST = {"initial_interval": "PT0.1S", "backoff_coefficient": 1, "maximum_attempts": 2}
EMAIL = {"channel": "email", "subject": "Hi {{ subscriber.id }}", "text": "x"}
SMS = {"channel": "sms", "text": "code 1234", "retry": FAST}

CliHerald = Callable[..., Awaitable[Herald]]


@asynccontextmanager
async def serving(api: FastAPI) -> AsyncIterator[str]:
    """The app (lifespan already entered by the fixture) on 127.0.0.1, for the test's loop."""
    port = free_port()
    config = uvicorn.Config(
        api, host="127.0.0.1", port=port, lifespan="off", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn exited before it started"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def cli_herald(
    herald_factory: HeraldFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[CliHerald]:
    """Start a Herald, serve its API, and point HERALD_URL / HERALD_KEY at it."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Herald:
            herald = await herald_factory(**overrides)
            url = await stack.enter_async_context(serving(herald.app))
            monkeypatch.setenv("HERALD_URL", url)
            monkeypatch.setenv("HERALD_KEY", herald.api_key)
            return herald

        yield start


async def herald_cli(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def ok(*args: str) -> Result:
    result = await herald_cli(*args)
    assert result.exit_code == 0, (args, result.output)
    return result


async def ok_json(*args: str) -> Any:
    return json.loads((await ok(*args, "--json")).stdout)


async def until(check: Callable[[], Awaitable[Any]], within: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + within
    while not (found := await check()):
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)
    return found


async def test_send_then_events_show_reaches_sent(
    cli_herald: CliHerald, fresh_provider: FakeProvider
) -> None:
    herald = await cli_herald()
    sub = unique("ada")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL])

    sent = await ok("send", "user.signup", "--to", sub, "--data", '{"plan": "pro"}')
    event_id, header, row = sent.stdout.splitlines()
    assert event_id.startswith("evt_")
    assert header.split() == ["NOTIFICATION", "FLOW", "SUBSCRIBER", "WORKFLOW"]
    notification_id, flow, subscriber, workflow_id = row.split()
    assert (flow, subscriber) == ("welcome", sub)

    async def delivered() -> dict[str, Any] | None:
        event: dict[str, Any] = await ok_json("events", "show", event_id)
        (n,) = event["notifications"]
        return event if n["deliveries"][0]["status"] == "sent" else None

    event = await until(delivered)
    assert event["id"] == event_id and event["data"] == {"plan": "pro"}
    (n,) = event["notifications"]
    assert (n["id"], n["workflow_id"], n["status"]) == (notification_id, workflow_id, "sent")
    assert n["deliveries"][0]["provider"] == "sendgrid"
    (mail,) = fresh_provider.requests("sendgrid")
    assert mail.json["personalizations"][0]["to"][0]["email"] == f"{sub}@example.com"

    shown = (await ok("events", "show", event_id)).stdout
    assert f"event       {event_id}  user.signup" in shown
    assert '"plan": "pro"' in shown
    delivery_row = next(line for line in shown.splitlines() if line.startswith("dlv_"))
    assert delivery_row.split()[1:6] == [notification_id, "email", "sent", "sendgrid", "1"]

    # The same idempotency key twice: one event, and the second says so.
    first = await ok_json("send", "user.signup", "--to", sub, "--idempotency-key", "k-1")
    again = await herald_cli("send", "user.signup", "--to", sub, "--idempotency-key", "k-1")
    assert again.exit_code == 0 and again.stdout.splitlines()[0] == first["id"]
    assert "used before" in again.stderr


async def test_a_failed_delivery_is_listed_and_retried(
    cli_herald: CliHerald, fresh_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Failed notifications wait for a retry instead of closing at once.
    herald = await cli_herald(dead_letter_retention=600)
    subs = [unique("u") for _ in range(2)]
    for sid in subs:
        await herald.put_subscriber(sid, phone="+14155550100")
    await herald.put_flow("otp", event_type="auth.otp", steps=[SMS])
    fresh_provider.fail("twilio", 503, times=None)
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    for sid in subs:
        await ok("send", "auth.otp", "--to", sid)

    async def dead_letters() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await ok_json(
            "deliveries", "failed", "--channel", "sms", "--flow", "otp", "--since", since
        )
        return rows if len(rows) == 2 else []

    rows = await until(dead_letters)
    assert {r["subscriber_id"] for r in rows} == set(subs)
    assert all(r["attempts"] == 2 and "503" in r["reason"] for r in rows)
    table = (await ok("deliveries", "failed", "--flow", "otp")).stdout.splitlines()
    assert table[0].split()[:3] == ["DELIVERY", "NOTIFICATION", "CHANNEL"]
    assert sorted(line.split()[0] for line in table[1:]) == sorted(r["delivery_id"] for r in rows)
    assert all("503" in line for line in table[1:])
    assert await ok_json("deliveries", "failed", "--channel", "email") == []

    fresh_provider.clear_faults()
    first, second = rows
    retried = await ok("retry", first["notification_id"], "--channel", "sms")
    assert (
        retried.stdout.strip()
        == f"retrying the failed sms deliveries of {first['notification_id']}"
    )

    async def sent(row: dict[str, Any]) -> bool:
        event = await ok_json("events", "show", row["event_id"])
        return bool(event["notifications"][0]["status"] == "sent")

    await until(lambda: sent(first))
    assert not await sent(second)
    bulk = await ok_json("retry", "--all", "--flow", "otp", "--since", since)
    assert bulk == {"notifications": [second["notification_id"]]}
    await until(lambda: sent(second))
    assert await ok_json("deliveries", "failed", "--flow", "otp") == []

    # Closed now: nothing failed is left to retry, said on one line.
    closed = await herald_cli("retry", first["notification_id"])
    assert closed.exit_code == 1
    assert closed.stderr.startswith(f"herald: notification '{first['notification_id']}' is closed")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # on a terminal, a spinner while it waits
    nothing = await ok("retry", "--all", "--flow", "otp")
    assert nothing.stdout.strip() == "no open notification has a matching failed delivery"
    assert "Asking failed notifications to retry" in nothing.stderr


async def test_replay_dry_run_counts_then_replays_once(
    cli_herald: CliHerald, monkeypatch: pytest.MonkeyPatch
) -> None:
    herald = await cli_herald()
    a, b = unique("a"), unique("b")
    for sid in (a, b):
        await herald.put_subscriber(sid, email=f"{sid}@example.com")
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    for to in ([a], [b], [a, b]):  # stored before any flow handles them
        await herald.wait_dispatched((await herald.publish(type="order.paid", to=to))["id"])
    await herald.put_flow("receipt", event_type="order.paid", steps=[EMAIL])

    args = ("replay", "--flow", "receipt", "--since", since, "--batch-size", "2")
    dry = await ok_json(*args, "--dry-run")
    assert dry["dry_run"] is True and dry["started"] == 0
    assert len(dry["items"]) == 4 and not any(i["already_replayed"] for i in dry["items"])
    assert sorted(i["subscriber_id"] for i in dry["items"]) == sorted([a, b, a, b])
    text = await ok(*args, "--dry-run")
    assert ": 3 events, 4 notifications: would start 4, 0 already replayed" in text.stdout

    replay_id = unique("backfill")
    done = await ok(*args, "--replay-id", replay_id)
    assert done.stdout.splitlines()[0] == (
        f"replay {replay_id}: 3 events, 4 notifications: started 4, 0 already replayed"
    )
    again = await ok_json(*args, "--replay-id", replay_id)
    assert again["started"] == 0 and all(i["already_replayed"] for i in again["items"])
    assert len(again["items"]) == 4

    # On a terminal the batches show live progress on stderr; scripts (above) see none.
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    live = await ok(*args, "--replay-id", replay_id, "--dry-run")
    assert "dry run" in live.stderr and "already replayed" in live.stderr
    assert "would start 0, 4 already replayed" in live.stdout


async def test_errors_are_one_line(cli_herald: CliHerald, monkeypatch: pytest.MonkeyPatch) -> None:
    herald = await cli_herald()
    monkeypatch.setenv("HERALD_KEY", "not-a-key")
    wrong = await herald_cli("events", "show", "evt_x")
    assert wrong.exit_code == 1
    assert wrong.stderr.splitlines() == ["herald: invalid API key (401 from GET /v1/events/evt_x)"]
    assert wrong.stdout == ""

    monkeypatch.setenv("HERALD_KEY", herald.api_key)
    unknown = await herald_cli("send", "user.signup", "--to", "nobody")
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("herald: body.to.0: unknown subscriber 'nobody'")
    assert len(unknown.stderr.splitlines()) == 1
    missing = await herald_cli("events", "show", "evt_missing")
    assert (
        missing.stderr
        == "herald: event 'evt_missing' not found (404 from GET /v1/events/evt_missing)\n"
    )

    bad = await herald_cli("send", "user.signup", "--to", "x", "--data", "[1]")
    assert bad.exit_code == 2 and "--data: must be a JSON object" in bad.stderr
    bad = await herald_cli("deliveries", "failed", "--since", "yesterday")
    assert bad.exit_code == 2 and "--since: not an ISO 8601 time" in bad.stderr
    bad = await herald_cli("retry")
    assert bad.exit_code == 2 and "NOTIFICATION_ID or --all" in bad.stderr
    bad = await herald_cli("retry", "ntf_x", "--flow", "otp")
    assert bad.exit_code == 2 and "--flow: only with --all" in bad.stderr

    monkeypatch.setenv("HERALD_URL", f"http://127.0.0.1:{free_port()}")
    down = await herald_cli("deliveries", "failed")
    assert down.exit_code == 1 and len(down.stderr.splitlines()) == 1
    assert down.stderr.startswith("herald: cannot reach the API at http://127.0.0.1:")
    monkeypatch.delenv("HERALD_KEY")
    unset = await herald_cli("deliveries", "failed")
    assert unset.exit_code == 1 and "HERALD_KEY is not set" in unset.stderr
