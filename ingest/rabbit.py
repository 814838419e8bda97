"""RabbitMQ: the topology Herald declares and the handlers that consume it.

- ``<prefix>.events``: durable topic exchange, routing key ``<tenant>.<event type>``;
  its alternate exchange ``<prefix>.events.unrouted`` catches the keys of tenants no
  consumer serves, so they are dead-lettered too instead of vanishing;
- ``<prefix>.ingest.<tenant>``: one durable queue per served tenant, bound ``<tenant>.#``;
  competing consumer processes share it;
- ``<prefix>.events.dead``: what can never be accepted, reason in ``x-herald-reason``.
  The tenant queues also dead-letter into it natively, should a message ever be rejected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aio_pika import IncomingMessage
from faststream import AckPolicy
from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage

from core.settings import Settings
from ingest.accept import Incoming, Ingestor, Verdict, raw_body, settle
from ingest.names import DEAD_REASON_HEADER, Names, split_address
from store.models import EventCreate

log = logging.getLogger(__name__)

# In-flight messages get this long to finish on SIGTERM (the supervisor waits 10 s).
GRACEFUL_SECONDS = 8.0
DOC_URL = "amqp://localhost:5672/"


def make_broker(url: str, prefetch: int) -> RabbitBroker:
    return RabbitBroker(
        url,
        # Per consumer, so per tenant queue: memory is bounded by prefetch × tenants. (A
        # process-wide limit would need global QoS, which RabbitMQ 4 deprecates.)
        default_channel=Channel(prefetch_count=prefetch),
        graceful_timeout=GRACEFUL_SECONDS,
        log_level=logging.DEBUG,  # a line per message is too much at INFO
    )


def events_exchange(names: Names) -> RabbitExchange:
    return RabbitExchange(
        names.exchange,
        type=ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": names.unrouted},
    )


def tenant_queue(names: Names, tenant: str, routing_key: str | None = None) -> RabbitQueue:
    return RabbitQueue(
        names.tenant_queue(tenant),
        durable=True,
        routing_key=routing_key or f"{tenant}.#",
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": names.dead_queue},
    )


def dead_queue(names: Names) -> RabbitQueue:
    return RabbitQueue(names.dead_queue, durable=True)


def document(prefix: str, url: str | None, prefetch: int) -> RabbitBroker:
    """A broker that is never connected, for the AsyncAPI document: the generic contract."""
    names = Names(prefix)
    broker = make_broker(url or DOC_URL, prefetch)

    @broker.subscriber(
        tenant_queue(names, "{tenant}", routing_key="{tenant}.{event_type}"),
        events_exchange(names),
        title=names.exchange,
        description=(
            "Publish an event for a tenant: the body is the JSON of POST /v1/events. Its "
            "idempotency_key, else the AMQP message_id, is the key: a repeat is one event. "
            "Herald consumes the tenants in HERALD_BROKER_TENANTS and acks a message only "
            "once its event is committed."
        ),
    )
    async def publish_event(event: EventCreate) -> None:
        """Herald accepts the event as POST /v1/events does."""

    broker.publisher(
        dead_queue(names),
        title=names.dead_queue,
        description=f"Messages Herald can never accept, reason in the {DEAD_REASON_HEADER} "
        "header (bad JSON, unknown or unlisted tenant, failed validation, unknown subscriber)",
        schema=bytes,
        persist=True,
    )
    return broker


class RabbitIngest:
    """Consumes the served tenants' queues and settles each message by its verdict."""

    def __init__(self, settings: Settings, ingestor: Ingestor, stopping: asyncio.Event) -> None:
        self.names = Names(settings.broker_prefix)
        self.ingestor = ingestor
        self.stopping = stopping
        assert settings.broker_url is not None
        self.broker = make_broker(settings.broker_url.get_secret_value(), settings.broker_prefetch)
        self.dead = self.broker.publisher(dead_queue(self.names), persist=True)
        exchange = events_exchange(self.names)
        for tenant in settings.broker_tenants:
            self._subscribe(tenant_queue(self.names, tenant), exchange, self._take)
        unrouted = RabbitExchange(self.names.unrouted, type=ExchangeType.FANOUT, durable=True)
        self._subscribe(RabbitQueue(self.names.unrouted, durable=True), unrouted, self._unrouted)

    def _subscribe(
        self,
        queue: RabbitQueue,
        exchange: RabbitExchange,
        take: Callable[[IncomingMessage], Awaitable[Verdict]],
    ) -> None:
        async def handle(message: RabbitMessage) -> None:
            verdict = await take(message.raw_message)
            await settle(
                verdict,
                ack=message.ack,
                hand_back=message.nack,  # requeued at once: the hold was the wait
                dead_letter=lambda reason: self._dead_letter(message, reason),
                backoff=self.ingestor.backoff,
                stopping=self.stopping,
            )

        self.broker.subscriber(
            queue,
            exchange,
            ack_policy=AckPolicy.MANUAL,
            decoder=raw_body,
            include_in_schema=False,
        )(handle)

    async def declare(self) -> None:
        """Before consuming: the dead-letter queue must exist when the first message fails."""
        await self.broker.connect()
        await self.broker.declare_queue(dead_queue(self.names))

    async def _take(self, raw: IncomingMessage) -> Verdict:
        tenant, event_type = split_address(raw.routing_key or "")
        return await self.ingestor.take(
            Incoming(tenant, event_type, raw.body, raw.message_id or None)
        )

    async def _unrouted(self, raw: IncomingMessage) -> Verdict:
        tenant, _ = split_address(raw.routing_key or "")
        self.ingestor.counters.dead += 1
        log.warning("dead-lettered a message for unserved tenant %r", tenant)
        return Verdict("dead", f"no Herald consumer serves tenant {tenant!r}")

    async def _dead_letter(self, message: RabbitMessage, reason: str) -> None:
        raw = message.raw_message
        headers = dict(raw.headers or {})
        headers[DEAD_REASON_HEADER] = reason[:1000]
        headers["x-herald-routing-key"] = raw.routing_key or ""
        headers["x-herald-exchange"] = raw.exchange or ""
        await self.dead.publish(
            raw.body,
            headers=headers,
            message_id=raw.message_id,
            correlation_id=raw.correlation_id,
            content_type=raw.content_type,
        )
