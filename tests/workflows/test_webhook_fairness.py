"""One tenant's hanging webhook receiver must not hold every webhook slot of a worker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import HeraldFactory, unique
from tests.fakes.tenants import start_tenants


class Receivers:
    """Loopback receivers: ``/hang/...`` answers only once released, ``/ok/...`` at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.cond = threading.Condition()
        self.arrived: list[tuple[str, float]] = []
        self.hanging = 0
        self.most_hanging = 0
        receivers = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                hangs = self.path.startswith("/hang/")
                with receivers.cond:
                    receivers.arrived.append((self.path, time.monotonic()))
                    if hangs:
                        receivers.hanging += 1
                        receivers.most_hanging = max(receivers.most_hanging, receivers.hanging)
                    receivers.cond.notify_all()
                if hangs:
                    receivers.release.wait(60)
                    with receivers.cond:
                        receivers.hanging -= 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, prefix: str) -> int:
        with self.cond:
            return sum(1 for path, _ in self.arrived if path.startswith(prefix))

    async def wait_for(self, prefix: str, count: int, within: float) -> None:
        deadline = time.monotonic() + within
        while self.count(prefix) < count:
            assert time.monotonic() < deadline, f"{count} x {prefix} not seen: {self.arrived}"
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    r = Receivers()
    yield r
    r.close()


async def test_a_hanging_tenant_does_not_stall_another_tenants_webhook(
    herald_factory: HeraldFactory, receivers: Receivers
) -> None:
    # 4 activity slots per queue; tenant A may use 2 of them for webhooks.
    herald, (a, b) = await start_tenants(
        herald_factory,
        2,
        worker_max_concurrent_activities=4,
        webhook_tenant_concurrency=2,
        webhook_timeout_seconds=30,
    )
    try:
        subs_a = [unique("a") for _ in range(6)]
        for sub in subs_a:
            await a.put_subscriber(sub)
        await a.put_flow(
            "slow",
            event_type="x.slow",
            steps=[{"channel": "webhook", "url": receivers.url + "/hang/{{ subscriber.id }}"}],
        )
        sub_b = unique("b")
        await b.put_subscriber(sub_b)
        await b.put_flow(
            "fast",
            event_type="x.fast",
            steps=[{"channel": "webhook", "url": receivers.url + "/ok"}],
        )

        await a.publish(type="x.slow", to=subs_a)  # six sends to a receiver that hangs
        await receivers.wait_for("/hang/", 2, within=20)
        started = time.monotonic()
        event_b = await b.publish(type="x.fast", to=[sub_b])

        await receivers.wait_for("/ok", 1, within=10)
        assert time.monotonic() - started < 10
        # A never had more than its bound of sends hanging at once.
        assert receivers.most_hanging == 2
        done = await b.wait_event(event_b["id"], within=20)
        assert done["notifications"][0]["deliveries"][0]["status"] == "delivered"

        # Once A's receiver answers, A's bounced sends go out too.
        receivers.release.set()
        await receivers.wait_for("/hang/", 6, within=60)
    finally:
        receivers.release.set()
