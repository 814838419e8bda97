"""The webhook SSRF guard end to end: the worker refuses, the flow API refuses early.

Traffic goes to loopback only. The refused target is 127.0.0.2 (outside an allowlist of
127.0.0.1/32), with a listener on it that must never see a connection; other refused
addresses appear only as literals the API classifies without connecting.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.conftest import HeraldFactory, unique
from tests.fakes.provider import FakeProvider

ONLY_127_0_0_1 = ["127.0.0.1/32"]


@pytest.fixture
def listener() -> Iterator[tuple[int, socket.socket]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.2", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock.getsockname()[1], sock
    sock.close()


def connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


async def test_a_refused_address_fails_the_delivery_at_once(
    herald_factory: HeraldFactory,
    fresh_provider: FakeProvider,
    listener: tuple[int, socket.socket],
) -> None:
    herald = await herald_factory(webhook_allowed_networks=ONLY_127_0_0_1)
    port, sock = listener
    blocked, allowed = unique("u"), unique("u")
    await herald.put_subscriber(blocked, webhook_url=f"http://127.0.0.2:{port}/hook")
    await herald.put_subscriber(allowed, webhook_url=fresh_provider.webhook_url(allowed))
    await herald.put_flow("hook", event_type="guard.check", steps=[{"channel": "webhook"}])

    event = await herald.wait_event(
        (await herald.publish(type="guard.check", to=[blocked, allowed]))["id"]
    )

    by_sub = {n["subscriber_id"]: n["deliveries"][0] for n in event["notifications"]}
    refused = by_sub[blocked]
    assert (refused["status"], refused["attempts"]) == ("failed", 1)
    assert "blocked_address" in refused["reason"]
    assert "127.0.0.2, a loopback address" in refused["reason"]
    assert not connected(sock)
    # 127.0.0.1 is in the allowlist: the fake receiver there got its webhook.
    assert by_sub[allowed]["status"] == "delivered"
    assert [r.path for r in fresh_provider.requests("webhook")] == [f"/hooks/{allowed}"]


async def test_a_template_rendering_to_a_refused_address_fails_too(
    herald_factory: HeraldFactory, listener: tuple[int, socket.socket]
) -> None:
    """The URL is chosen by whoever posts the event: the send is where it is checked."""
    herald = await herald_factory(webhook_allowed_networks=ONLY_127_0_0_1)
    port, sock = listener
    sub = unique("u")
    await herald.put_subscriber(sub)
    await herald.put_flow(
        "tpl", event_type="guard.tpl", steps=[{"channel": "webhook", "url": "{{ data.url }}"}]
    )

    event = await herald.wait_event(
        (
            await herald.publish(
                type="guard.tpl", to=[sub], data={"url": f"http://127.0.0.2:{port}/x"}
            )
        )["id"]
    )

    (d,) = event["notifications"][0]["deliveries"]
    assert (d["status"], d["attempts"]) == ("failed", 1)
    assert "loopback" in d["reason"]
    assert not connected(sock)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        # Loopback targets outside the allowlist only: the other rules (link-local, private…)
        # are tested on addresses as data in tests/core/test_netguard.py.
        ("http://127.0.0.2:{port}/hook", "loopback"),
        ("http://[::ffff:127.0.0.3]/hook", "loopback"),
        ("http://[::1]:8080/hook", "loopback"),
    ],
)
async def test_a_literal_url_the_guard_refuses_is_422(
    herald_factory: HeraldFactory, listener: tuple[int, socket.socket], url: str, rule: str
) -> None:
    herald = await herald_factory(webhook_allowed_networks=ONLY_127_0_0_1)
    port, sock = listener
    steps = [{"channel": "email", "subject": "s", "text": "t"}]
    steps.append({"channel": "webhook", "url": url.format(port=port)})

    r = await herald.http.put("/v1/flows/guarded", json={"event_type": "a.b", "steps": steps})

    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "steps", 1, "webhook", "url"]
    assert f"a {rule} address" in err["msg"]
    assert (await herald.http.get("/v1/flows/guarded")).status_code == 404  # nothing stored
    assert not connected(sock)


async def test_allowed_and_templated_urls_are_accepted(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(webhook_allowed_networks=ONLY_127_0_0_1)
    for url in (fresh_provider.webhook_url("ok"), "{{ data.url }}", "http://{{ data.host }}/x"):
        r = await herald.http.put(
            "/v1/flows/fine",
            json={"event_type": "a.b", "steps": [{"channel": "webhook", "url": url}]},
        )
        assert r.status_code == 200, (url, r.text)
