"""Hand accepted events to Temporal off the request path (a transactional outbox).

The API commits the event, its notifications and their workflow ids in one
transaction, answers 202, and queues the event here. Starts are idempotent
(deterministic workflow ids, REJECT_DUPLICATE + USE_EXISTING), so dispatching
twice is harmless: the sweep re-dispatches anything left undispatched by a
crash, an outage or a full queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.common import TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api.temporal import TemporalGateway, TemporalUnavailableError
from core.flows import FlowDefinition
from core.settings import Settings
from core.types import Channel
from store.events import AcceptedEvent, PlannedNotification, mark_dispatched, undispatched
from store.models import utcnow
from workflows.notification import NotificationWorkflow, identifying_attributes, summary
from workflows.types import NotificationInput

log = logging.getLogger(__name__)


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
        channel_queues={c: settings.channel_task_queue(c) for c in Channel},
        retry={c: settings.retry_for(c) for c in Channel},
        providers={c: settings.providers_for(c) for c in Channel},
        dead_letter_retention=settings.dead_letter_retention,
        replay_id=n.replay_id,
    )


async def _start(client: Client, settings: Settings, inp: NotificationInput, wf_id: str) -> None:
    try:
        await client.start_workflow(
            NotificationWorkflow.run,
            inp,
            id=wf_id,
            task_queue=settings.workflow_task_queue,
            # A running duplicate is joined; a finished one is never re-run for the same key.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(identifying_attributes(inp)),
            static_summary=summary(inp),
        )
    except WorkflowAlreadyStartedError:
        log.debug("workflow %s already ran; start is a no-op", wf_id)


async def dispatch(gateway: TemporalGateway, settings: Settings, accepted: AcceptedEvent) -> None:
    """Start every notification of one event; raises if Temporal cannot be reached."""
    if not accepted.notifications:
        return
    client = await gateway.client()
    try:
        await asyncio.gather(
            *(
                _start(
                    client,
                    settings,
                    workflow_input(settings, accepted, p),
                    p.notification.workflow_id,
                )
                for p in accepted.notifications
            )
        )
    except RPCError as exc:
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
    ) -> None:
        self.engine = engine
        self.gateway = gateway
        self.settings = settings
        self.queue: asyncio.Queue[AcceptedEvent] = asyncio.Queue(max_queue)
        self.concurrency = concurrency
        self.sweep_every = settings.dispatch_sweep_seconds
        self.sweep_grace = sweep_grace
        self._done: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    def submit(self, accepted: AcceptedEvent) -> bool:
        """Queue without waiting; False means the sweep will pick the event up later."""
        try:
            self.queue.put_nowait(accepted)
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
            accepted = await self.queue.get()
            try:
                await dispatch(self.gateway, self.settings, accepted)
                self.record_dispatched(accepted.event.id)
            except TemporalUnavailableError as exc:
                log.warning("event %s not dispatched: %s", accepted.event.id, exc)
            except Exception:
                log.exception("event %s not dispatched", accepted.event.id)
            finally:
                self.queue.task_done()

    async def _flush(self) -> None:
        done, self._done = self._done, []
        if done:
            await run_in_threadpool(mark_dispatched, self.engine, done)

    async def _flush_loop(self) -> None:
        """Mark dispatched in batches: one UPDATE for many events, not one per request."""
        while True:
            await asyncio.sleep(0.05)
            try:
                await self._flush()
            except Exception:
                log.exception("could not mark events dispatched; the sweep will retry them")

    async def sweep_once(self, grace: timedelta | None = None) -> int:
        before = utcnow() - (self.sweep_grace if grace is None else grace)
        pending = await run_in_threadpool(
            undispatched, self.engine, received_before=before, limit=500
        )
        for accepted in pending:
            if not accepted.notifications:
                self.record_dispatched(accepted.event.id)
            else:
                self.submit(accepted)
        return len(pending)

    async def _sweep_loop(self) -> None:
        while True:
            try:
                if self.queue.empty():
                    await self.sweep_once()
            except Exception:
                log.exception("dispatch sweep failed")
            await asyncio.sleep(self.sweep_every)
