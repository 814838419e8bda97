"""NATS JetStream: stream ``<prefix>-events`` on ``<prefix>.events.>``, one durable pull
consumer per served tenant (``<prefix>-ingest-<tenant>``, subjects
``<prefix>.events.<tenant>.<event type>``), and dead letters on ``<prefix>.events-dead``
(stream ``<prefix>-dead``) with the reason in ``x-herald-reason``.

A tenant no consumer serves is not dead-lettered here: its messages stay in the stream
until one does. The message id is JetStream's own ``Nats-Msg-Id``, which the stream also
uses to drop duplicate publishes within its duplicate window.
"""

from __future__ import annotations

import asyncio
import logging

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from nats.js.api import ConsumerConfig

from core.settings import Settings
from ingest.accept import Incoming, Ingestor, raw_body, settle
from ingest.names import DEAD_REASON_HEADER, Names, split_address
from store.models import EventCreate

log = logging.getLogger(__name__)

GRACEFUL_SECONDS = 8.0
DOC_URL = "nats://localhost:4222"
# Longer than the longest hold (30 s), so a held message is not redelivered meanwhile.
ACK_WAIT_SECONDS = 120.0


def make_broker(url: str) -> NatsBroker:
    return NatsBroker(url, graceful_timeout=GRACEFUL_SECONDS, log_level=logging.DEBUG)


def document(prefix: str, url: str | None, prefetch: int) -> NatsBroker:
    """A broker that is never connected, for the AsyncAPI document."""
    names = Names(prefix)
    broker = make_broker(url or DOC_URL)
    stream = JStream(names.stream, subjects=[names.subjects])

    @broker.subscriber(
        f"{prefix}.events.{{tenant}}.{{event_type}}",
        stream=stream,
        durable=names.durable("{tenant}"),
        pull_sub=PullSub(batch_size=prefetch),
        title=names.subjects,
        description=(
            "Publish an event for a tenant with JetStream: the body is the JSON of "
            "POST /v1/events. Its idempotency_key, else Nats-Msg-Id, is the key: a repeat "
            "is one event."
        ),
    )
    async def publish_event(event: EventCreate) -> None:
        """Herald accepts the event as POST /v1/events does."""

    return broker


class NatsIngest:
    """Pulls at most ``prefetch`` messages at a time per tenant and settles each."""

    def __init__(self, settings: Settings, ingestor: Ingestor, stopping: asyncio.Event) -> None:
        self.names = Names(settings.broker_prefix)
        self.ingestor = ingestor
        self.stopping = stopping
        assert settings.broker_url is not None
        self.broker = make_broker(settings.broker_url.get_secret_value())
        stream = JStream(self.names.stream, subjects=[self.names.subjects])
        dead = JStream(self.names.dead_stream, subjects=[self.names.dead_subject])
        self.broker.publisher(self.names.dead_subject, stream=dead, include_in_schema=False)
        prefetch = settings.broker_prefetch
        for tenant in settings.broker_tenants:
            self.broker.subscriber(
                self.names.tenant_subjects(tenant),
                stream=stream,
                durable=self.names.durable(tenant),
                pull_sub=PullSub(batch_size=prefetch, timeout=1.0),
                config=ConsumerConfig(max_ack_pending=prefetch, ack_wait=ACK_WAIT_SECONDS),
                ack_policy=AckPolicy.MANUAL,
                decoder=raw_body,
                include_in_schema=False,
            )(self._handle)

    async def declare(self) -> None:
        """Streams are declared by the broker's start (the dead stream with the publisher)."""

    async def _handle(self, message: NatsMessage) -> None:
        raw = message.raw_message
        headers = raw.headers or {}
        tenant, event_type = split_address(self.names.subject_address(raw.subject))
        verdict = await self.ingestor.take(
            Incoming(tenant, event_type, raw.data, headers.get("Nats-Msg-Id") or None)
        )
        await settle(
            verdict,
            ack=message.ack,
            hand_back=message.nack,  # redelivered at once: the hold was the wait
            dead_letter=lambda reason: self._dead_letter(message, reason),
            backoff=self.ingestor.backoff,
            stopping=self.stopping,
        )

    async def _dead_letter(self, message: NatsMessage, reason: str) -> None:
        raw = message.raw_message
        headers = {k: v for k, v in (raw.headers or {}).items() if not k.startswith("Nats-")}
        headers[DEAD_REASON_HEADER] = reason[:1000]
        headers["x-herald-subject"] = raw.subject
        if msg_id := (raw.headers or {}).get("Nats-Msg-Id"):
            headers["x-herald-msg-id"] = msg_id
        await self.broker.publish(
            raw.data, self.names.dead_subject, headers=headers, stream=self.names.dead_stream
        )
