"""The outbox: an accepted event is stored first and reaches Temporal even after an outage."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from dispatching.outbox import Dispatcher
from dispatching.temporal import TemporalGateway
from tests.conftest import Herald, HeraldFactory, store_undispatched, unique
from tests.fakes.provider import FakeProvider

EMAIL_STEP = {"channel": "email", "subject": "Hi", "text": "Hello"}


def mails_to(provider: FakeProvider, email: str) -> list[object]:
    return [
        r
        for r in provider.requests("sendgrid")
        if r.status == 202 and r.json["personalizations"][0]["to"][0]["email"] == email
    ]


class Proxy:
    """A TCP forwarder we can switch on, to take Temporal away from the API and bring it back."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server: asyncio.Server | None = None

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


@pytest.fixture
async def proxied(
    temporal_env: WorkflowEnvironment, herald_factory: HeraldFactory
) -> AsyncIterator[tuple[Herald, Proxy]]:
    proxy = Proxy(temporal_env.client.service_client.config.target_host)
    herald = await herald_factory(
        temporal_address=f"127.0.0.1:{proxy.port}",  # the proxy is down: so is Temporal
        temporal_connect_timeout_seconds=1,
        api_connects_itself=True,
    )
    yield herald, proxy
    await proxy.down()


async def test_outage_answers_503_keeps_the_event_and_sends_it_when_back(
    proxied: tuple[Herald, Proxy], fresh_provider: FakeProvider
) -> None:
    herald, proxy = proxied
    sub = unique("u")
    email = f"{sub}@example.com"
    await herald.put_subscriber(sub, email=email)
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL_STEP])

    r = await herald.http.post("/v1/events", json={"type": "user.signup", "to": [sub]})
    assert r.status_code == 503
    detail = r.json()["detail"]
    assert "Temporal is unreachable" in detail["message"]
    stored = (await herald.http.get(f"/v1/events/{detail['event_id']}")).json()
    assert stored["dispatched_at"] is None
    assert stored["notifications"][0]["status"] == "pending"
    assert (await herald.http.get("/healthz")).json()["temporal"] == "unreachable"

    await proxy.up()
    dispatcher: Dispatcher = herald.app.state.dispatcher
    # The sweep covers the whole deployment; ours is among what it finds.
    assert await dispatcher.sweep_once(grace=timedelta(0)) >= 1
    event = await herald.wait_event(detail["event_id"])
    assert event["notifications"][0]["status"] == "sent"
    assert len(mails_to(fresh_provider, email)) == 1
    # Back to normal: accepted at once, delivered once.
    ok = await herald.http.post("/v1/events", json={"type": "user.signup", "to": [sub]})
    assert ok.status_code == 202
    await herald.wait_event(ok.json()["id"])
    assert len(mails_to(fresh_provider, email)) == 2


async def test_sweep_dispatches_events_a_crash_left_behind(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    email = f"{sub}@example.com"
    await herald.put_subscriber(sub, email=email, phone="+14155550100")
    await herald.put_flow("welcome", event_type="user.signup", steps=[EMAIL_STEP])
    orphan = store_undispatched(herald, "user.signup", sub)
    # The flow is edited afterwards: the orphan still runs the flow it was accepted with.
    await herald.put_flow(
        "welcome",
        event_type="user.signup",
        steps=[
            EMAIL_STEP,
            {"channel": "sms", "text": "new step"},
        ],
    )
    gateway = TemporalGateway(herald.settings, herald.client)
    app_dispatcher = Dispatcher(herald.engine, gateway, herald.settings)
    await app_dispatcher.start()
    try:
        assert await app_dispatcher.sweep_once(grace=timedelta(0)) >= 1
        event = await herald.wait_event(orphan.event.id)
    finally:
        await app_dispatcher.stop()
    (n,) = event["notifications"]
    assert [d["channel"] for d in n["deliveries"]] == ["email"]
    assert n["status"] == "sent"
    assert len(mails_to(fresh_provider, email)) == 1
