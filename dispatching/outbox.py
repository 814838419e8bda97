"""Hand accepted events to Temporal off the request path (a transactional outbox).

The API (and the broker consumer, ``ingest``) commits the event, its notifications
and their workflow ids in one transaction, answers 202 (or acks the message), and
queues the event here. Starts are idempotent (deterministic workflow ids,
REJECT_DUPLICATE + USE_EXISTING), so dispatching twice is harmless: the sweep
re-dispatches anything left undispatched by a crash, an outage or a full queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

import anyio.to_thread
from opentelemetry.context import Context
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.flows import FlowDefinition, SendStep
from core.metrics import OUTBOX_LAG, OUTBOX_QUEUED
from core.settings import Settings
from core.telemetry import attached, current_context, log_ids
from core.templates import TemplateError, render
from core.types import Channel, digest_workflow_id
from dispatching.give_way import GiveWay
from dispatching.temporal import TemporalGateway, TemporalUnavailableError, signal_open
from store.events import (
    AcceptedEvent,
    PlannedNotification,
    exit_reason,
    mark_dispatched,
)
from store.models import utcnow
from store.outbox import pending, record_failure
from workflows.broadcast import SA_BROADCAST
from workflows.digest import DigestWorkflow
from workflows.notification import NotificationWorkflow, identifying_attributes, summary
from workflows.types import DigestInput, DigestItem, NotificationInput, RetryRequest, StopRequest

log = logging.getLogger(__name__)

# How often started events are marked dispatched. Each mark is a write transaction, which
# the worker's writes queue behind on SQLite; at 50 ms, light load marked about two events
# per transaction. A crash loses at most this much marking: the sweep (after its grace of
# seconds) starts those events again, which their workflow ids make harmless.
MARK_EVERY = 0.25

P = ParamSpec("P")
T = TypeVar("T")


class DispatchRefusedError(Exception):
    """Temporal refused an event's workflow input (e.g. over its 2 MB payload limit): the
    same input will be refused again, so the outbox counts these and gives up."""


def _refused(exc: RPCError) -> bool:
    if exc.status == RPCStatusCode.INVALID_ARGUMENT:  # "Blob data size exceeds limit."
        return True
    # Over the gRPC message size: "received message ... larger than max".
    return exc.status == RPCStatusCode.RESOURCE_EXHAUSTED and "larger than max" in exc.message


async def in_thread(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Blocking database work off the event loop, in the pool FastAPI's threadpool uses."""
    return await anyio.to_thread.run_sync(lambda: func(*args, **kwargs))


def workflow_input(
    settings: Settings, accepted: AcceptedEvent, planned: PlannedNotification
) -> NotificationInput:
    n = planned.notification
    return NotificationInput(
        tenant_id=n.tenant_id,
        notification_id=n.id,
        event_id=accepted.event.id,
        event_type=accepted.event.type,
        subscriber_id=n.subscriber_id,
        flow=FlowDefinition.model_validate(n.flow),
        delivery_ids=planned.delivery_ids,
        replay_id=n.replay_id,
        **configured(settings),
    )


def configured(settings: Settings) -> dict[str, Any]:
    """What a notification takes from the settings when it starts: queues, policies."""
    return {
        "channel_queues": {c: settings.channel_task_queue(c) for c in Channel},
        "retry": {c: settings.retry_for(c) for c in Channel},
        "providers": {c: settings.providers_for(c) for c in Channel},
        "dead_letter_retention": settings.dead_letter_retention,
    }


def notification_queue(settings: Settings, flow: FlowDefinition) -> str:
    """Where a notification's workflow runs.

    A flow that sends on one channel only runs on that channel's queue: the channel's
    worker runs the workflow too, and Temporal hands it the send with the workflow task
    (eager activity dispatch) instead of through matching, a hop of 12-23 ms at light
    load (BENCHMARKS.md). A rate-limited channel keeps the hop, since an eager send would
    bypass the server's limit for the queue; so do flows of several channels.
    """
    channels = {step.channel for step in flow.steps if isinstance(step, SendStep)}
    if len(channels) == 1:
        (channel,) = channels
        if settings.rate_limit_for(channel) is None:
            return settings.channel_task_queue(channel)
    return settings.workflow_task_queue


async def _start(client: Client, settings: Settings, inp: NotificationInput, wf_id: str) -> None:
    try:
        await client.start_workflow(
            NotificationWorkflow.run,
            inp,
            id=wf_id,
            task_queue=notification_queue(settings, inp.flow),
            # A running duplicate is joined; a finished one is never re-run for the same key.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(identifying_attributes(inp)),
            static_summary=summary(inp),
        )
    except WorkflowAlreadyStartedError:
        log.debug("workflow %s already ran; start is a no-op", wf_id)


async def retry_with_start(
    client: Client, settings: Settings, accepted: AcceptedEvent, request: RetryRequest
) -> bool:
    """Retry a notification whose workflow may never have run: a broadcast's fast path
    sends without one. Signal-with-start: a running workflow takes the signal; a new one
    finds its failed deliveries and sends them again. False when it ran and has closed."""
    planned = accepted.notifications[0]
    inp = workflow_input(settings, accepted, planned)
    attributes = identifying_attributes(inp)
    if (broadcast := planned.notification.broadcast_id) is not None:
        attributes.append(SearchAttributePair(SA_BROADCAST, broadcast))
    try:
        await client.start_workflow(
            NotificationWorkflow.run,
            inp,
            id=planned.notification.workflow_id,
            task_queue=notification_queue(settings, inp.flow),
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            start_signal="retry",
            start_signal_args=[request],
            search_attributes=TypedSearchAttributes(attributes),
            static_summary=f"{summary(inp)} [retry]",
        )
    except WorkflowAlreadyStartedError:
        return False
    return True


async def _add_to_digest(
    client: Client,
    settings: Settings,
    inp: NotificationInput,
    accepted: AcceptedEvent,
    workflow_id: str,
) -> None:
    """Signal-with-start: the open digest takes the event, or a new window opens with it."""
    digest = inp.flow.digest
    assert digest is not None
    key = None
    if digest.key:
        context = {"data": accepted.event.data, "event": {"id": accepted.event.id}}
        try:  # in a thread: a rendering may take up to HERALD_MAX_RENDER_SECONDS
            key = (await in_thread(render, digest.key, context)).strip() or None
        except TemplateError as exc:
            # Failing here would fail every re-dispatch too: batch it under no key instead.
            log.warning("digest key of flow %s: %s; using no key", inp.flow.key, exc)
    digest_id = digest_workflow_id(
        inp.tenant_id, inp.flow.key, inp.subscriber_id, key, inp.replay_id
    )
    item = DigestItem(
        notification_id=inp.notification_id,
        event_id=inp.event_id,
        workflow_id=workflow_id,
        delivery_ids=inp.delivery_ids,
    )
    template = inp.model_copy(update={"digest_event_ids": []})
    await client.start_workflow(
        DigestWorkflow.run,
        DigestInput(template=template),
        id=digest_id,
        task_queue=settings.workflow_task_queue,
        start_signal="add",
        start_signal_args=[item],
        # Each window is a new run of the same id; a running one just takes the signal.
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=TypedSearchAttributes(identifying_attributes(inp)),
        static_summary=f"digest: {inp.flow.key} → {inp.subscriber_id} (window {digest.window})",
    )


async def dispatch(gateway: TemporalGateway, settings: Settings, accepted: AcceptedEvent) -> None:
    """Start every notification of one event; raises if Temporal cannot be reached."""
    if not accepted.notifications and not accepted.exited:
        return
    client = await gateway.client()
    starts: list[Awaitable[object]] = []
    for p in accepted.notifications:
        if not p.runs:
            continue
        inp = workflow_input(settings, accepted, p)
        if inp.flow.digest is not None and inp.replay_id is None:
            starts.append(
                _add_to_digest(client, settings, inp, accepted, p.notification.workflow_id)
            )
        else:
            starts.append(_start(client, settings, inp, p.notification.workflow_id))
    # Wakes them at once; the stop is already stored, and checked before every step.
    stop = StopRequest(reason=exit_reason(accepted.event))
    starts.extend(signal_open(client, wf, "stop", stop) for wf in accepted.exited)
    try:
        await asyncio.gather(*starts)
    except RPCError as exc:
        if _refused(exc):  # Temporal answered: it is there, the event is at fault
            gateway.mark_reachable()
            raise DispatchRefusedError(f"Temporal refused the workflow: {exc.message}") from exc
        gateway.mark_unreachable(exc)
        raise TemporalUnavailableError(str(exc)) from exc
    gateway.mark_reachable()


class Dispatcher:
    """A bounded in-memory queue in front of Temporal, drained by a few tasks."""

    def __init__(
        self,
        engine: Engine,
        gateway: TemporalGateway,
        settings: Settings,
        *,
        concurrency: int = 8,
        max_queue: int = 10_000,
        sweep_grace: timedelta = timedelta(seconds=10),
        tenants: Collection[str] | None = None,
    ) -> None:
        self.engine = engine
        self.gateway = gateway
        self.settings = settings
        # Each event travels with the trace context it was accepted in, so its workflow
        # starts join the request's trace (nothing is traced without HERALD_OTEL_ENDPOINT).
        self.queue: asyncio.Queue[tuple[AcceptedEvent, Context, float]] = asyncio.Queue(max_queue)
        OUTBOX_QUEUED.set_function(self.queue.qsize)
        self.concurrency = concurrency
        self.sweep_every = settings.dispatch_sweep_seconds
        self.sweep_grace = sweep_grace
        # None sweeps every tenant (the API); the broker consumer sweeps the tenants it serves.
        self.tenants = None if tenants is None else frozenset(tenants)
        # The API counts its accepts in here (``accepting``); nothing else does.
        self.give_way = GiveWay(settings.dispatch_give_way_at, settings.dispatch_max_hold_seconds)
        self._done: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    def submit(self, accepted: AcceptedEvent) -> bool:
        """Queue without waiting; False means the sweep will pick the event up later."""
        try:
            self.queue.put_nowait((accepted, current_context(), time.monotonic()))
            return True
        except asyncio.QueueFull:
            log.warning("dispatch queue full; event %s left for the sweep", accepted.event.id)
            return False

    def record_dispatched(self, event_id: str) -> None:
        self._done.append(event_id)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._drain()) for _ in range(self.concurrency)]
        self._tasks.append(asyncio.create_task(self._flush_loop()))
        if self.sweep_every > 0:
            self._tasks.append(asyncio.create_task(self._sweep_loop()))

    async def stop(self, drain_for: float = 5.0) -> None:
        """Give queued events a moment to go out; whatever is left, the next sweep sends."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), drain_for)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush()

    async def _drain(self) -> None:
        while True:
            accepted, trace_context, queued_at = await self.queue.get()
            try:
                await self.give_way.wait(queued_at)
                with attached(trace_context), log_ids(tenant_id=accepted.event.tenant_id):
                    await dispatch(self.gateway, self.settings, accepted)
                OUTBOX_LAG.observe((utcnow() - accepted.event.received_at).total_seconds())
                self.record_dispatched(accepted.event.id)
            except TemporalUnavailableError as exc:
                log.warning("event %s not dispatched: %s", accepted.event.id, exc)
            except DispatchRefusedError as exc:
                log.warning("event %s not dispatched: %s", accepted.event.id, exc)
                await self._failed(accepted, str(exc))
            except Exception as exc:
                log.exception("event %s not dispatched", accepted.event.id)
                await self._failed(accepted, f"{type(exc).__name__}: {exc}")
            finally:
                self.queue.task_done()

    async def _failed(self, accepted: AcceptedEvent, reason: str) -> None:
        """Count a failure of the event's own; the sweep skips it once it gives up."""
        event = accepted.event
        cap = self.settings.dispatch_max_attempts
        try:
            gave_up = await in_thread(
                record_failure, self.engine, event.id, event.tenant_id, reason, cap
            )
        except Exception:
            log.exception("could not record the dispatch failure of event %s", event.id)
            return
        if gave_up:
            log.error(
                "gave up dispatching event %s after %d attempts (HERALD_DISPATCH_MAX_ATTEMPTS): %s",
                event.id,
                cap,
                reason,
            )

    async def _flush(self) -> None:
        done, self._done = self._done, []
        if done:
            await in_thread(mark_dispatched, self.engine, done)

    async def _flush_loop(self) -> None:
        """Mark dispatched in batches: one UPDATE for many events, not one per request."""
        while True:
            await asyncio.sleep(MARK_EVERY)
            try:
                await self._flush()
            except Exception:
                log.exception("could not mark events dispatched; the sweep will retry them")

    async def sweep_once(self, grace: timedelta | None = None) -> int:
        before = utcnow() - (self.sweep_grace if grace is None else grace)
        # Leaves out the events it gave up on (store.outbox), which stay in GET /v1/events.
        left = await in_thread(pending, self.engine, received_before=before, limit=500)
        if self.tenants is not None:
            left = [a for a in left if a.event.tenant_id in self.tenants]
        for accepted in left:
            if not accepted.notifications:
                self.record_dispatched(accepted.event.id)
            else:
                self.submit(accepted)
        return len(left)

    async def _sweep_loop(self) -> None:
        while True:
            try:
                if self.queue.empty():
                    await self.sweep_once()
            except Exception:
                log.exception("dispatch sweep failed")
            await asyncio.sleep(self.sweep_every)
