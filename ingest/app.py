"""The consumer process: a FastStream app around the broker adapter, with the outbox.

Startup: ensure the schema, connect, declare, consume. Should the database be down, the
consumer starts all the same and retries in the background; until the database answers,
every message is held and handed back (it waits in the broker).
The process runs its own dispatcher and sweep for the tenants it serves, so an event it
committed reaches Temporal even when the API is not running.

SIGTERM: held messages are handed back at once, in-flight ones finish and are acked
(up to ``GRACEFUL_SECONDS``), then queued dispatches get a moment and the sweep of the
next start takes whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import lru_cache
from typing import Any

from faststream import FastStream
from faststream.specification import AsyncAPI
from temporalio.client import Client

from core.heap import freeze_startup_heap
from core.settings import Settings
from dispatching.outbox import Dispatcher
from dispatching.temporal import TemporalGateway, TemporalUnavailableError
from ingest import nats, rabbit, status
from ingest.accept import Backoff, Ingestor
from ingest.names import Names
from store.db import make_engine

log = logging.getLogger("herald.ingest")


class ConfigError(Exception):
    """The settings do not describe a consumer that could run."""


class IngestService:
    """One consumer process: ``service.app`` runs it (``run``) or embeds it (``start``/``stop``)."""

    def __init__(
        self, settings: Settings, client: Client | None = None, backoff: Backoff | None = None
    ) -> None:
        if settings.broker_kind is None:
            raise ConfigError("HERALD_BROKER_URL is not set (amqp://… or nats://…)")
        if not settings.broker_tenants:
            raise ConfigError("HERALD_BROKER_TENANTS is empty: name the tenants to consume for")
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.gateway = TemporalGateway(settings, client)
        self.dispatcher = Dispatcher(
            self.engine, self.gateway, settings, tenants=settings.broker_tenants
        )
        self.ingestor = Ingestor(self.engine, self.dispatcher, settings.broker_tenants, backoff)
        self.stopping = asyncio.Event()
        self.adapter: rabbit.RabbitIngest | nats.NatsIngest = (
            rabbit.RabbitIngest(settings, self.ingestor, self.stopping)
            if settings.broker_kind == "rabbit"
            else nats.NatsIngest(settings, self.ingestor, self.stopping)
        )
        self._prepare: asyncio.Task[None] | None = None
        # Every delivery status change, published from the delivery history (the outbox).
        self.status_names = Names(settings.broker_prefix)
        send = (
            status.rabbit_sender(self.adapter.broker, self.status_names)
            if isinstance(self.adapter, rabbit.RabbitIngest)
            else status.nats_sender(self.adapter.broker, self.status_names)
        )
        self.status = status.StatusPublisher(
            self.engine,
            send,
            name=status.stream_name(self.status_names),
            lease=settings.status_lease_seconds,
        )
        self._status: asyncio.Task[None] | None = None
        self.app = FastStream(
            self.adapter.broker,
            logger=log,
            on_startup=[self._open],
            after_startup=[self._announce],
            on_shutdown=[self._draining],
            after_shutdown=[self._close],
        )

    async def _open(self) -> None:
        if not await self.ingestor.prepare_once():  # the database is down: consume anyway
            self._prepare = asyncio.create_task(self.ingestor.prepare(self.stopping))
        await self.dispatcher.start()
        with contextlib.suppress(TemporalUnavailableError):
            await self.gateway.client()  # says now whether Temporal is there; the outbox waits
        await self.adapter.declare()
        await status.declare(self.adapter.broker, self.status_names)
        self._status = asyncio.create_task(self.status.run(self.stopping))

    async def _announce(self) -> None:
        freeze_startup_heap(self.settings.gc_freeze)
        names, s = Names(self.settings.broker_prefix), self.settings
        where = (
            f"exchange {names.exchange}, routing key <tenant>.<event type>"
            if s.broker_kind == "rabbit"
            else f"JetStream subject {s.broker_prefix}.events.<tenant>.<event type>"
        )
        log.info(
            "consuming events for %s from %s (%s); prefetch %d",
            ", ".join(s.broker_tenants),
            s.broker_address,
            where,
            s.broker_prefetch,
        )
        log.info(
            "publishing delivery status changes to %s",
            f"exchange {self.status_names.status_exchange}, routing key <tenant>.<channel>.<status>"
            if s.broker_kind == "rabbit"
            else f"JetStream subject {s.broker_prefix}.status.<tenant>.<channel>.<status>",
        )

    async def _draining(self) -> None:
        log.info("stopping: handing back held messages, finishing those in flight")
        self.stopping.set()

    async def _close(self) -> None:
        if self._status is not None:  # stopping is set: it ends after its current batch
            await asyncio.gather(self._status, return_exceptions=True)
        if self._prepare is not None:
            self._prepare.cancel()
            await asyncio.gather(self._prepare, return_exceptions=True)
        try:
            await self.dispatcher.stop()
        except Exception as exc:  # e.g. the database went away: the next sweep catches up
            log.warning("could not record the last dispatches (%s); the sweep will", exc)
        self.engine.dispose()
        c = self.ingestor.counters
        log.info(
            "stopped: %d accepted, %d redelivered duplicates, %d dead-lettered, %d handed back",
            c.accepted,
            c.duplicates,
            c.dead,
            c.retried,
        )


@lru_cache(maxsize=8)
def _asyncapi(kind: str, prefix: str, address: str | None, prefetch: int) -> dict[str, Any]:
    module = nats if kind == "nats" else rabbit
    broker = module.document(prefix, address, prefetch)
    spec = AsyncAPI(
        broker,
        title="Herald event ingestion",
        version="0.1.0",
        description="Publish business events to a broker; Herald accepts them as "
        "POST /v1/events does. Who may publish for a tenant is the broker's own "
        "permission system (RabbitMQ vhost and user permissions, NATS accounts).",
    ).to_specification()
    schema: dict[str, Any] = spec.to_jsonable()
    return schema


def asyncapi_schema(settings: Settings) -> dict[str, Any]:
    """The AsyncAPI document of the configured broker (RabbitMQ when none is)."""
    return _asyncapi(
        settings.broker_kind or "rabbit",
        settings.broker_prefix,
        settings.broker_address,  # no password in a public document
        settings.broker_prefetch,
    )
