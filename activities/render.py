"""Turn a flow step plus fresh subscriber/event rows into a provider-ready message."""

from __future__ import annotations

from typing import Any

from channels.base import (
    Content,
    EmailContent,
    Message,
    PushContent,
    SmsContent,
    WebhookContent,
)
from core.flows import EmailStep, PushStep, SendStep, SmsStep, WebhookStep
from core.templates import render, render_tree
from core.types import Channel
from store.models import Event, Subscriber


class NoAddressError(Exception):
    """The subscriber has nowhere to receive this channel; the step is skipped."""


def template_context(event: Event, subscriber: Subscriber) -> dict[str, Any]:
    return {
        "subscriber": {
            "id": subscriber.id,
            "email": subscriber.email,
            "phone": subscriber.phone,
            "name": subscriber.name,
            "locale": subscriber.locale,
            "timezone": subscriber.timezone,
            "data": subscriber.data,
        },
        "data": event.data,
        "event": envelope(event),
    }


def envelope(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "actor": event.actor,
        "occurred_at": event.received_at.isoformat(),
        "data": event.data,
    }


def localized(step: SendStep, locale: str | None, default_locale: str) -> SendStep:
    """The step with its best locale variant laid over it: de-AT, then de, then the default."""
    locales = getattr(step, "locales", None)
    if not locales:
        return step
    wanted: list[str] = []
    for tag in (locale, default_locale):
        if tag:
            tag = tag.replace("_", "-")
            wanted += [tag, tag.split("-")[0]]
    by_lower = {k.replace("_", "-").lower(): v for k, v in locales.items()}
    for tag in wanted:
        variant = by_lower.get(tag.lower())
        if variant is not None:
            update = variant.model_dump(exclude_none=True)
            if "text" in update and "html" not in update and isinstance(step, EmailStep):
                update["html"] = None  # never pair translated text with the base HTML
            return step.model_copy(update=update)
    return step


def digest_context(events: list[Event]) -> dict[str, Any]:
    return {"count": len(events), "events": [envelope(e) for e in events]}


def build_message(
    step: SendStep,
    *,
    delivery_id: str,
    event: Event,
    subscriber: Subscriber,
    default_locale: str = "en",
    digest: list[Event] | None = None,
) -> Message:
    ctx = template_context(event, subscriber)
    if digest is not None:
        ctx["digest"] = digest_context(digest)
    step = localized(step, subscriber.locale, default_locale)
    to: tuple[str, ...]
    content: Content
    if isinstance(step, EmailStep):
        to = _need(subscriber.email, "email address")
        content = EmailContent(
            subject=render(step.subject, ctx),
            text=render(step.text, ctx),
            html=None if step.html is None else render(step.html, ctx, html=True),
        )
    elif isinstance(step, SmsStep):
        to = _need(subscriber.phone, "phone number")
        content = SmsContent(text=render(step.text, ctx))
    elif isinstance(step, PushStep):
        if not subscriber.push_tokens:
            raise NoAddressError("subscriber has no push token")
        to = tuple(subscriber.push_tokens)
        content = PushContent(
            title=render(step.title, ctx),
            body=render(step.body, ctx),
            data={k: str(v) for k, v in render_tree(step.data, ctx).items()},
        )
    elif isinstance(step, WebhookStep):
        url = render(step.url, ctx).strip() if step.url else subscriber.webhook_url
        to = _need(url, "webhook URL")
        payload = (
            render_tree(step.payload, ctx)
            if step.payload is not None
            else {**envelope(event), "subscriber_id": subscriber.id}
        )
        content = WebhookContent(payload=payload)
    else:  # pragma: no cover - the Step union is closed
        raise TypeError(f"unknown step {step!r}")
    return Message(
        delivery_id=delivery_id,
        tenant_id=event.tenant_id,
        channel=Channel(step.channel),
        to=to,
        content=content,
    )


def _need(value: str | None, what: str) -> tuple[str, ...]:
    if not value:
        raise NoAddressError(f"subscriber has no {what}")
    return (value,)
