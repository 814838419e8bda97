"""The broker-independent half of the consumer: one message in, one verdict out.

A message is parsed and validated exactly as ``POST /v1/events`` does it (``EventCreate``,
the idempotency key, the event store), then handed to the dispatch outbox. Messages in
flight are stored together, one transaction for many (``GroupCommit``).
The verdict tells the broker adapter what to do with the message:

- ``ack``: the event is committed (or was already, for a redelivery);
- ``dead``: it can never be accepted; dead-letter it with the reason, then ack;
- ``retry``: Herald cannot take it now (database down, schema not ready); hold it for
  ``delay`` seconds, then hand it back to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from faststream import StreamMessage
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from core.limits import WorkflowInputTooLargeError, env_name, limits
from dispatching.outbox import Dispatcher, in_thread
from store import events as q
from store.db import read_scope
from store.group_commit import GroupCommit
from store.intake import AcceptRequest
from store.models import EventCreate
from store.schema import require_current
from store.tenants import unknown_tenants

log = logging.getLogger(__name__)

# The database is unreachable or busy, not the message at fault: the message waits.
TRANSIENT: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    TimeoutError,
    ConnectionError,
)
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Incoming:
    """One broker message, as an adapter hands it over."""

    tenant: str
    # From the routing key or subject; None when it names only the tenant.
    event_type: str | None
    body: bytes
    # AMQP ``message_id`` or NATS ``Nats-Msg-Id``; None when the publisher set none.
    message_id: str | None


@dataclass(frozen=True)
class Verdict:
    action: Literal["ack", "dead", "retry"]
    reason: str = ""
    delay: float = 0.0


class DeadLetterError(Exception):
    """The message can never be accepted; the text is the dead letter's reason."""


class Backoff:
    """How long to hold a message Herald cannot take now: as long as the outage has lasted.

    Shared by every handler of the process, so a thousand failing messages wait the same
    growing delay instead of each doubling its own; a success ends the outage.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._since: float | None = None

    def failed(self) -> float:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        delay = min(self.maximum, max(self.initial, now - self._since))
        return delay * random.uniform(0.8, 1.2)

    def succeeded(self) -> None:
        self._since = None

    @property
    def in_outage(self) -> bool:
        return self._since is not None


@dataclass
class Counters:
    accepted: int = 0
    duplicates: int = 0
    dead: int = 0
    retried: int = 0


def parse(incoming: Incoming) -> tuple[EventCreate, str]:
    """Validate the body as ``POST /v1/events`` does and pick the idempotency key."""
    cap = limits().max_request_bytes
    if len(incoming.body) > cap:  # the API's 413
        raise DeadLetterError(
            f"body is {len(incoming.body):,} bytes, over the {cap:,}-byte limit "
            f"({env_name('max_request_bytes')})"
        )
    try:
        payload = json.loads(incoming.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeadLetterError(f"body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise DeadLetterError(f"body must be a JSON object, not {type(payload).__name__}")
    routed, given = incoming.event_type, payload.get("type")
    if routed is not None and given is None:
        payload["type"] = routed  # the routing key names the type; the body may omit it
    elif routed is not None and given != routed:
        raise DeadLetterError(f"routing key names event type {routed!r}, the body {given!r}")
    try:
        body = EventCreate.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise DeadLetterError(f"invalid event: {problems}") from exc
    # The body's key wins: unlike an HTTP header, a message id is often set by the client
    # library on its own (aio-pika, and so FastStream, give every message a random one).
    key = body.idempotency_key or incoming.message_id
    if not key:
        raise DeadLetterError(
            "no message id (AMQP message_id, NATS Nats-Msg-Id) and no idempotency_key: "
            "a redelivery could not be told from a new event"
        )
    if len(key) > MAX_KEY_LENGTH:
        raise DeadLetterError(f"message id longer than {MAX_KEY_LENGTH} characters")
    return body, key


class Ingestor:
    """Accepts messages for the served tenants and queues their events for dispatch."""

    def __init__(
        self,
        engine: Engine,
        dispatcher: Dispatcher,
        tenants: Collection[str],
        backoff: Backoff | None = None,
    ) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self.tenants = frozenset(tenants)
        self.backoff = backoff or Backoff()
        self.counters = Counters()
        self.ready = False
        self._known: set[str] = set()
        self.commits = GroupCommit(engine)

    async def prepare_once(self) -> bool:
        """Check the schema (as the API and worker do) and the tenants; False: down."""
        try:
            await in_thread(require_current, self.engine)
            unknown = await in_thread(self._unknown_tenants, sorted(self.tenants))
        except TRANSIENT as exc:
            log.warning("database not reachable: %s", _short(exc))
            return False
        self.backoff.succeeded()
        self.ready = True
        if unknown:
            log.error(
                "HERALD_BROKER_TENANTS lists tenants Herald does not know: %s; their "
                "messages are dead-lettered until they exist",
                ", ".join(unknown),
            )
        return True

    async def prepare(self, stopping: asyncio.Event) -> None:
        """Retry ``prepare_once`` while the database is down; messages wait in the broker."""
        while not stopping.is_set() and not await self.prepare_once():
            await hold(stopping, self.backoff.failed())

    async def take(self, incoming: Incoming) -> Verdict:
        if not self.ready:
            self.counters.retried += 1
            return Verdict("retry", "database not ready", self.backoff.failed())
        try:
            accepted = await self._accept(incoming)
        except DeadLetterError as exc:
            self.counters.dead += 1
            log.warning("dead-lettered a message for %s: %s", incoming.tenant, exc)
            return Verdict("dead", str(exc))
        except TRANSIENT as exc:
            self.counters.retried += 1
            delay = self.backoff.failed()
            log.warning("database unavailable (%s); message back in %.1fs", _short(exc), delay)
            return Verdict("retry", _short(exc), delay)
        except Exception as exc:
            # A fault of Herald's: dead-lettered with the reason, never redelivered forever.
            self.counters.dead += 1
            log.exception("message for %s not accepted", incoming.tenant)
            return Verdict("dead", f"internal error: {type(exc).__name__}: {exc}"[:500])
        self.backoff.succeeded()
        if accepted.created:
            self.counters.accepted += 1
        else:
            self.counters.duplicates += 1
        if accepted.created or accepted.event.dispatched_at is None:
            self.dispatcher.submit(accepted)  # committed: the outbox takes it from here
        return Verdict("ack")

    async def _accept(self, incoming: Incoming) -> q.AcceptedEvent:
        if incoming.tenant not in self.tenants:
            raise DeadLetterError(f"tenant {incoming.tenant!r} is not in HERALD_BROKER_TENANTS")
        body, key = parse(incoming)
        if incoming.tenant not in self._known:
            if await in_thread(self._unknown_tenants, [incoming.tenant]):
                raise DeadLetterError(f"unknown tenant {incoming.tenant!r}")
            self._known.add(incoming.tenant)
        request = AcceptRequest(
            type=body.type,
            data=body.data,
            actor=body.actor,
            recipients=q.recipient_specs(body),
            idempotency_key=key,
            cancellation_key=body.cancellation_key,
            request_fingerprint=q.fingerprint(
                body.model_dump(mode="json", exclude={"idempotency_key"})
            ),
        )
        try:
            return await self.commits.accept(incoming.tenant, request)
        except q.UnknownSubscribersError as exc:
            raise DeadLetterError(
                f"unknown subscriber(s) {', '.join(exc.ids)}: create them first or pass "
                "their fields inline"
            ) from exc
        except q.IdempotencyConflictError as exc:
            raise DeadLetterError(f"idempotency key {key!r} reused with a different body") from exc
        except WorkflowInputTooLargeError as exc:
            raise DeadLetterError(str(exc)) from exc

    def _unknown_tenants(self, tenants: list[str]) -> list[str]:
        with read_scope(self.engine) as session:
            return unknown_tenants(session, tenants)


async def hold(stopping: asyncio.Event, delay: float) -> None:
    """Wait ``delay`` seconds, or less once the process is stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), delay)


async def settle(
    verdict: Verdict,
    *,
    ack: Callable[[], Awaitable[object]],
    hand_back: Callable[[], Awaitable[object]],
    dead_letter: Callable[[str], Awaitable[object]],
    backoff: Backoff,
    stopping: asyncio.Event,
) -> None:
    """Act on a verdict with the adapter's operations; the same for every broker.

    A dead letter is published (and confirmed) before the ack, so a crash in between
    leaves a copy in each place rather than none. A message handed back is held first,
    so an outage is not a hot loop.
    """
    if verdict.action == "dead":
        try:
            await dead_letter(verdict.reason)
        except Exception as exc:
            log.warning("could not dead-letter a message (%s); it goes back", _short(exc))
            verdict = Verdict("retry", _short(exc), backoff.failed())
    if verdict.action == "retry":
        await hold(stopping, verdict.delay)
        await hand_back()
    else:
        await ack()


async def raw_body(message: StreamMessage[Any]) -> bytes:
    """FastStream decoder that leaves the body alone: bad JSON is a dead letter, not a crash."""
    return message.body


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
