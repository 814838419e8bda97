"""Open pixel, tracked links and one-click unsubscribe headers, added to rendered messages."""

from __future__ import annotations

import dataclasses

from channels.base import EmailContent, Message, PushContent, SmsContent
from core.flows import EmailStep, SendStep, SmsStep
from core.settings import Settings
from core.tracking import Links, Signer, TrackedUrl, rewrite_html, rewrite_text
from store.engagement import NewLink

ONE_CLICK = "List-Unsubscribe=One-Click"


class Tracker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.links = Links(settings.base_url, Signer(settings.tracking_secret.get_secret_value()))

    def apply(
        self, message: Message, step: SendStep, *, critical: bool
    ) -> tuple[Message, list[NewLink]]:
        """The message with tracking added, and the links to store before it is sent.

        Unsubscribe headers are not tracking: every email of a non-critical flow carries
        them, whatever ``HERALD_TRACKING`` or the step's ``track`` say.
        """
        content = message.content
        tracking = self.settings.tracking
        tracked: list[TrackedUrl] = []
        did = message.delivery_id
        if isinstance(content, EmailContent):
            html = content.html
            if html and tracking and isinstance(step, EmailStep) and step.track:
                html, tracked = rewrite_html(html, self.links, did)
            headers = dict(content.headers)
            if not critical:
                headers["List-Unsubscribe"] = f"<{self.links.unsubscribe_url(did)}>"
                headers["List-Unsubscribe-Post"] = ONE_CLICK
            content = dataclasses.replace(content, html=html, headers=headers)
        elif isinstance(content, SmsContent):
            if tracking and isinstance(step, SmsStep) and step.track_links:
                text, tracked = rewrite_text(content.text, self.links, did)
                content = dataclasses.replace(content, text=text)
        elif isinstance(content, PushContent):
            # FCM has no receipts: the app reports the open, with or without an API key.
            data = {**content.data, "herald_delivery_id": did}
            if tracking:
                data["herald_open_url"] = self.links.open_url(did, pixel=False)
            content = dataclasses.replace(content, data=data)
        rows = [NewLink(t.link_id, message.tenant_id, did, t.url) for t in tracked]
        return dataclasses.replace(message, content=content), rows
