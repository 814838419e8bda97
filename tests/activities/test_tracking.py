"""The tracker on rendered messages, and the send activity storing links before the send."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import select
from temporalio.testing import ActivityEnvironment

from activities.delivery import DeliverInput, DeliveryActivities
from activities.tracking import Tracker
from channels.base import (
    Content,
    EmailContent,
    Message,
    PushContent,
    SmsContent,
    WebhookContent,
)
from channels.registry import build_adapters
from core.flows import EmailStep, PushStep, SendStep, SmsStep, WebhookStep
from core.settings import Settings
from core.tracking import Signer, TokenKind
from core.types import Channel
from store.db import read_scope, session_scope
from store.engagement import NewLink, TrackedLink
from store.flows import put_flow
from store.subscribers import upsert_subscriber
from tests.conftest import accept_one, unique
from tests.fakes.provider import FakeProvider

BASE = "https://herald.example"
HTML = '<body><a href="https://shop.test/o?a=1&amp;b=2">order</a></body>'
DLV = "dlv_0123456789abcdef0123456789abcdef"


def settings(**overrides: Any) -> Settings:
    return Settings.model_validate({"env": "test", "public_url": BASE + "/", **overrides})


def message(channel: Channel, content: Content) -> Message:
    return Message(delivery_id=DLV, tenant_id="t", channel=channel, to=("x",), content=content)


def email(html: str | None = HTML) -> Message:
    return message(Channel.EMAIL, EmailContent(subject="S", text="T", html=html))


def apply(
    msg: Message, step: SendStep, *, critical: bool = False, **overrides: Any
) -> tuple[Message, list[NewLink]]:
    return Tracker(settings(**overrides)).apply(msg, step, critical=critical)


def unsubscribe_headers(content: Content) -> dict[str, str]:
    assert isinstance(content, EmailContent)
    return content.headers


def test_email_gets_links_pixel_and_unsubscribe_headers() -> None:
    out, links = apply(email(), EmailStep(subject="S", text="T"))
    content = out.content
    assert isinstance(content, EmailContent)
    assert [(link.url, link.delivery_id, link.tenant_id) for link in links] == [
        ("https://shop.test/o?a=1&b=2", DLV, "t")
    ]
    assert content.html is not None
    assert f'href="{BASE}/t/c/{links[0].id}.' in content.html
    assert f'<img src="{BASE}/t/o/{DLV}.' in content.html
    assert content.text == "T"  # the plain-text part is left alone
    unsubscribe = content.headers["List-Unsubscribe"]
    assert unsubscribe.startswith(f"<{BASE}/u/") and unsubscribe.endswith(">")
    token = unsubscribe[len(f"<{BASE}/u/") : -1]
    signer = Signer(settings().tracking_secret.get_secret_value())
    assert signer.verify(TokenKind.UNSUBSCRIBE, token) == DLV
    assert content.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_retry_renders_the_same_links() -> None:
    first, links = apply(email(), EmailStep(subject="S", text="T"))
    again, again_links = apply(email(), EmailStep(subject="S", text="T"))
    assert again == first
    assert [(r.id, r.url) for r in again_links] == [(r.id, r.url) for r in links]


def test_step_opt_out_keeps_the_unsubscribe_headers() -> None:
    out, links = apply(email(), EmailStep(subject="S", text="T", track=False))
    assert links == []
    assert isinstance(out.content, EmailContent)
    assert out.content.html == HTML
    assert "List-Unsubscribe" in out.content.headers


def test_tracking_off_globally_keeps_the_unsubscribe_headers() -> None:
    out, links = apply(email(), EmailStep(subject="S", text="T"), tracking=False)
    assert links == []
    assert isinstance(out.content, EmailContent)
    assert out.content.html == HTML
    assert set(out.content.headers) == {"List-Unsubscribe", "List-Unsubscribe-Post"}


def test_critical_flows_carry_no_unsubscribe() -> None:
    out, links = apply(email(), EmailStep(subject="S", text="T"), critical=True)
    assert len(links) == 1  # still tracked
    assert unsubscribe_headers(out.content) == {}


def test_text_only_email_gets_headers_only() -> None:
    out, links = apply(email(html=None), EmailStep(subject="S", text="T"))
    assert links == []
    assert isinstance(out.content, EmailContent)
    assert out.content.html is None
    assert "List-Unsubscribe" in out.content.headers


def test_sms_links_only_when_the_step_asks() -> None:
    sms = message(Channel.SMS, SmsContent(text="See https://shop.test/o/7."))
    plain, none = apply(sms, SmsStep(text="x"))
    assert (plain, none) == (sms, [])
    out, links = apply(sms, SmsStep(text="x", track_links=True))
    assert [link.url for link in links] == ["https://shop.test/o/7"]
    short = Tracker(settings()).links.click_url(links[0].id)
    assert short.startswith(f"{BASE}/t/c/")
    assert out.content == SmsContent(text=f"See {short}.")
    off, none = apply(sms, SmsStep(text="x", track_links=True), tracking=False)
    assert (off, none) == (sms, [])


def test_push_carries_the_delivery_id_and_a_signed_open_link() -> None:
    push = message(Channel.PUSH, PushContent(title="T", body="B", data={"order": "7"}))
    out, links = apply(push, PushStep(title="T", body="B"))
    assert links == []
    assert isinstance(out.content, PushContent)
    data = out.content.data
    assert data["order"] == "7" and data["herald_delivery_id"] == DLV
    assert data["herald_open_url"].startswith(f"{BASE}/t/o/")
    token = data["herald_open_url"].removeprefix(f"{BASE}/t/o/")
    signer = Signer(settings().tracking_secret.get_secret_value())
    assert signer.verify(TokenKind.OPEN, token) == DLV
    assert all(isinstance(v, str) for v in data.values())  # FCM data values are strings
    off, _ = apply(push, PushStep(title="T", body="B"), tracking=False)
    assert isinstance(off.content, PushContent)
    assert off.content.data == {"order": "7", "herald_delivery_id": DLV}


def test_webhooks_are_left_alone() -> None:
    hook = message(Channel.WEBHOOK, WebhookContent(payload={"url": "https://x.test/"}))
    assert apply(hook, WebhookStep()) == (hook, [])


# --- the activity ---------------------------------------------------------------------


def test_links_are_stored_before_the_send_and_sent_rewritten(
    engine: Engine, fresh_provider: FakeProvider, tmp_path: Path
) -> None:
    tenant, sub = unique("t"), unique("u")
    step = {"channel": "email", "subject": "S", "text": "T", "html": HTML}
    with session_scope(engine) as s:
        upsert_subscriber(s, tenant, sub, {"email": "ada@example.com"})
        put_flow(s, tenant, "f", {"event_type": "e.t", "category": "news", "steps": [step]})
    accepted = accept_one(engine, tenant, "e.t", sub)
    (planned,) = accepted.notifications
    delivery_id = str(planned.delivery_ids[0])
    conf = settings(**fresh_provider.settings_overrides(tmp_path))
    acts = DeliveryActivities(engine, {}, tracker=Tracker(conf))
    acts.adapters = build_adapters(conf, acts.sandbox_sink)
    inp = DeliverInput(
        delivery_id=delivery_id,
        flow_key="f",
        category="news",
        critical=False,
        step=EmailStep(subject="S", text="T", html=HTML),
    )
    ActivityEnvironment().run(acts.deliver, inp)

    with read_scope(engine) as s:
        rows = s.exec(select(TrackedLink).where(TrackedLink.delivery_id == delivery_id)).all()
    assert [(r.url, r.tenant_id) for r in rows] == [("https://shop.test/o?a=1&b=2", tenant)]
    (mail,) = fresh_provider.requests("sendgrid")
    html = {c["type"]: c["value"] for c in mail.json["content"]}["text/html"]
    assert f"{BASE}/t/c/{rows[0].id}." in html
    assert mail.json["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
