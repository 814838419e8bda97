"""Herald's own tracking end to end: what the providers receive, and the links coming back."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from httpx import Response

from api.routes.tracking import GIF
from core.tracking import Signer, TokenKind
from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.provider import FakeProvider
from tests.fakes.smtp import FakeSmtp

HTML = (
    "<html><body><p>Hi {{ subscriber.name }}</p>"
    '<a href="https://shop.test/o?id=7&amp;ref=mail">your order</a> '
    "<a href='mailto:help@shop.test'>help</a></body></html>"
)
ORDER_URL = "https://shop.test/o?id=7&ref=mail"
NO_CACHE = "no-cache, no-store, must-revalidate, private"


def email_step(**extra: Any) -> dict[str, Any]:
    return {"channel": "email", "subject": "News", "text": "Hi", "html": HTML, **extra}


async def run_flow(
    herald: Herald, steps: list[dict[str, Any]], *, critical: bool = False, sub: str | None = None
) -> list[dict[str, Any]]:
    """Publish one event to a new flow (category ``news``); its deliveries once it finished."""
    if sub is None:
        sub = unique("user")
        await herald.put_subscriber(
            sub, email="ada@example.com", phone="+14155550100", push_tokens=["tok-1"], name="Ada"
        )
    key = unique("flow")
    await herald.put_flow(key, event_type=key, category="news", critical=critical, steps=steps)
    accepted = await herald.publish(type=key, to=[sub])
    event = await herald.wait_event(accepted["id"])
    (notification,) = event["notifications"]
    deliveries: list[dict[str, Any]] = notification["deliveries"]
    return deliveries


def sent_html(provider: FakeProvider) -> tuple[str, dict[str, str]]:
    """The HTML part and the headers of the one mail the fake SendGrid received."""
    (mail,) = provider.requests("sendgrid")
    contents = {c["type"]: c["value"] for c in mail.json["content"]}
    return contents["text/html"], mail.json.get("headers", {})


def path(herald: Herald, url: str) -> str:
    """A link Herald put in a message, as a request to the API under test."""
    base = herald.settings.base_url
    assert url.startswith(base + "/"), url
    return url.removeprefix(base)


def links_in(herald: Herald, text: str, prefix: str) -> list[str]:
    base = re.escape(herald.settings.base_url + prefix)
    return re.findall(rf"{base}[A-Za-z0-9_~-]+\.[A-Za-z0-9_-]{{16}}(?:\.gif)?", text)


def is_unsubscribe_header(herald: Herald, value: str) -> bool:
    """``<https://.../u/token>``, the form RFC 2369 and RFC 8058 ask for."""
    return re.fullmatch(rf"<{re.escape(herald.settings.base_url)}/u/[^>]+>", value) is not None


async def recorded(herald: Herald) -> None:
    """Opens and clicks are written off the request path: wait until they are."""
    await herald.app.state.recorder.flush()


def assert_pixel(r: Response) -> None:
    assert r.status_code == 200
    assert r.content == GIF and r.content.startswith(b"GIF89a")
    assert r.headers["content-type"] == "image/gif"
    assert r.headers["cache-control"] == NO_CACHE
    assert r.headers["pragma"] == "no-cache"
    assert r.headers["expires"] == "0"


async def test_email_links_pixel_and_headers_round_trip(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    (d,) = await run_flow(herald, [email_step()])
    html, headers = sent_html(fresh_provider)

    assert "shop.test/o" not in html
    assert "href='mailto:help@shop.test'" in html
    (click,) = links_in(herald, html, "/t/c/")
    (pixel,) = links_in(herald, html, "/t/o/")
    assert pixel.endswith(".gif")
    assert html.index(pixel) < html.index("</body>")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(
        rf"<{re.escape(herald.settings.base_url)}/u/[^>]+>", headers["List-Unsubscribe"]
    )

    assert_pixel(await herald.http.get(path(herald, pixel), headers={"Authorization": ""}))
    await recorded(herald)
    opened = await herald.delivery(d["id"])
    assert opened["status"] == "opened"
    assert opened["opened_at"] is not None
    assert ("opened", "pixel") in [(e["status"], e["source"]) for e in opened["timeline"]]

    r = await herald.http.get(path(herald, click), headers={"Authorization": ""})
    assert r.status_code == 302
    assert r.headers["location"] == ORDER_URL
    await recorded(herald)
    clicked = await herald.delivery(d["id"])
    assert clicked["status"] == "clicked"
    assert [c["url"] for c in clicked["clicks"]] == [ORDER_URL]
    assert clicked["clicks"][0]["source"] == "link"


async def test_tampered_and_unknown_links_get_404_and_no_redirect(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    (d,) = await run_flow(herald, [email_step()])
    html, _ = sent_html(fresh_provider)
    (click,) = links_in(herald, html, "/t/c/")
    link_id, mac = path(herald, click).removeprefix("/t/c/").split(".")
    signer = Signer(herald.settings.tracking_secret.get_secret_value())
    forged = [
        f"/t/c/{link_id}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",  # a changed MAC
        f"/t/c/{link_id[::-1]}.{mac}",  # another link id under the old MAC
        f"/t/c/{link_id}",  # no MAC at all
        f"/t/c/{signer.sign(TokenKind.OPEN, link_id)}",  # an open token for a click
        # A valid signature over a link id that was never stored.
        f"/t/c/{signer.sign(TokenKind.CLICK, 'AAAAAAAAAAAAAAAA')}",
        f"/t/c/{Signer('another secret').sign(TokenKind.CLICK, link_id)}",
    ]
    for url in forged:
        r = await herald.http.get(url)
        assert r.status_code == 404, url
        assert "location" not in r.headers
    await recorded(herald)
    after = await herald.delivery(d["id"])
    assert after["status"] == "sent"
    assert after["clicks"] == []


async def test_pixel_answers_a_gif_whatever_the_token(herald: Herald) -> None:
    for url in ("/t/o/nonsense.gif", "/t/o/dlv_x.AAAAAAAAAAAAAAAA.gif", "/t/o/%00%ff"):
        assert_pixel(await herald.http.get(url))
    signer = Signer(herald.settings.tracking_secret.get_secret_value())
    # Signed, but for no delivery that exists: still only a GIF.
    assert_pixel(await herald.http.get(f"/t/o/{signer.sign(TokenKind.OPEN, 'dlv_gone')}.gif"))


async def test_step_can_opt_out_of_tracking_but_not_of_unsubscribe(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    await run_flow(herald, [email_step(track=False)])
    html, headers = sent_html(fresh_provider)
    assert html == HTML.replace("{{ subscriber.name }}", "Ada")
    assert "/t/" not in html
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/u/" in headers["List-Unsubscribe"]


async def test_tracking_can_be_turned_off_globally(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(tracking=False)
    await run_flow(herald, [email_step()])
    html, headers = sent_html(fresh_provider)
    assert "shop.test/o?id=7&amp;ref=mail" in html
    assert "/t/" not in html and "<img" not in html
    assert "List-Unsubscribe" in headers and "List-Unsubscribe-Post" in headers


async def test_critical_flows_carry_no_unsubscribe(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    await run_flow(herald, [email_step()], critical=True)
    html, headers = sent_html(fresh_provider)
    assert "List-Unsubscribe" not in headers and "List-Unsubscribe-Post" not in headers
    assert links_in(herald, html, "/t/c/")  # still tracked


async def test_one_click_unsubscribe_turns_the_category_off(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("user")
    await herald.put_subscriber(sub, email="ada@example.com", name="Ada")
    (d,) = await run_flow(herald, [email_step()], sub=sub)
    _, headers = sent_html(fresh_provider)
    url = path(herald, headers["List-Unsubscribe"].strip("<>"))

    async def categories() -> dict[str, bool]:
        r = await herald.http.get(f"/v1/subscribers/{sub}/preferences")
        assert r.status_code == 200, r.text
        found: dict[str, bool] = r.json()["categories"]
        return found

    # A mail scanner following the link changes nothing.
    page = await herald.http.get(url, headers={"Authorization": ""})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<form method="post">' in page.text and "<button" in page.text
    assert "news" in page.text
    assert await categories() == {}

    # RFC 8058: what a mailbox provider POSTs.
    r = await herald.http.post(
        url,
        content="List-Unsubscribe=One-Click",
        headers={"Authorization": "", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    assert "unsubscribed" in r.text
    assert await categories() == {"news": False}
    after = await herald.delivery(d["id"])
    assert ("unsubscribed", "unsubscribe") in [
        (e["status"], e["source"]) for e in after["timeline"]
    ]
    assert after["unsubscribed_at"] is not None

    # Opting back in and pressing the page's button (an empty POST) turns it off again.
    r = await herald.http.put(f"/v1/subscribers/{sub}/preferences", json={"categories": {}})
    assert r.status_code == 200, r.text
    r = await herald.http.post(url, headers={"Authorization": ""})
    assert r.status_code == 200, r.text
    assert await categories() == {"news": False}

    fresh_provider.reset()
    (later,) = await run_flow(herald, [email_step()], sub=sub)
    assert later["status"] == "skipped"
    assert later["reason"] == "opted out of email by category 'news' preference"
    assert fresh_provider.requests("sendgrid") == []


async def test_bad_unsubscribe_tokens_get_404(herald: Herald) -> None:
    signer = Signer(herald.settings.tracking_secret.get_secret_value())
    for token in (
        "nonsense",
        signer.sign(TokenKind.OPEN, "dlv_x"),  # another kind's token
        signer.sign(TokenKind.UNSUBSCRIBE, "dlv_gone"),  # no such delivery
    ):
        assert (await herald.http.get(f"/u/{token}")).status_code == 404
        assert (await herald.http.post(f"/u/{token}")).status_code == 404


@pytest.fixture
def smtp() -> Iterator[FakeSmtp]:
    with FakeSmtp() as server:
        yield server


async def test_smtp_mail_carries_the_headers_and_the_tracking(
    herald_factory: HeraldFactory, smtp: FakeSmtp
) -> None:
    herald = await herald_factory(smtp_url=smtp.url(), providers={"email": ["smtp"]})
    (d,) = await run_flow(herald, [email_step()])
    assert d["provider"] == "smtp"
    (mail,) = smtp.messages
    msg = mail.message
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(
        rf"<{re.escape(herald.settings.base_url)}/u/[^>]+>", msg["List-Unsubscribe"]
    )
    part = msg.get_body(("html",))
    assert part is not None
    html = part.get_content()
    (click,) = links_in(herald, html, "/t/c/")
    assert links_in(herald, html, "/t/o/")
    r = await herald.http.get(path(herald, click))
    assert (r.status_code, r.headers["location"]) == (302, ORDER_URL)


async def test_sms_links_are_tracked_when_the_step_asks(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    text = "Your order: https://shop.test/o/7. Thanks!"
    tracked, plain = await run_flow(
        herald,
        [
            {"channel": "sms", "text": text, "track_links": True},
            {"channel": "sms", "text": text},
        ],
    )
    # The two sends may reach the fake in either order.
    bodies = sorted((r.form["Body"] for r in fresh_provider.requests("twilio")), key=len)
    assert len(bodies) == 2 and bodies[0] == text
    body = bodies[1]
    (short,) = links_in(herald, body, "/t/c/")
    assert body == text.replace("https://shop.test/o/7", short)
    r = await herald.http.get(path(herald, short))
    assert (r.status_code, r.headers["location"]) == (302, "https://shop.test/o/7")
    await recorded(herald)
    assert (await herald.delivery(tracked["id"]))["status"] == "clicked"
    assert (await herald.delivery(plain["id"]))["status"] == "sent"


async def test_push_data_carries_a_signed_open_link(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    (d,) = await run_flow(herald, [{"channel": "push", "title": "T", "body": "B"}])
    (push,) = fresh_provider.requests("fcm")
    data = push.json["message"]["data"]
    assert data["herald_delivery_id"] == d["id"]
    open_url = data["herald_open_url"]
    assert_pixel(await herald.http.get(path(herald, open_url), headers={"Authorization": ""}))
    await recorded(herald)
    opened = await herald.delivery(d["id"])
    assert opened["status"] == "opened"
    assert ("opened", "app") in [(e["status"], e["source"]) for e in opened["timeline"]]
