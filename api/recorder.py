"""Record pixel and click hits off the request path, many in one transaction.

A hit answered at once and written later keeps the database's write lock (one for the
whole SQLite file) off the request path: the pixel and the redirect cost a token check
and a queue put. One background task drains the queue: up to ``batch_size`` hits, or
whatever came within ``max_wait`` of the first, go to ``store.lifecycle.record_batch`` in one
transaction, then the workflows waiting for those stages are signalled.

Trade-off: a hit lives only in this process's memory until its batch commits. A hit
accepted in the last ``max_wait`` (50 ms) before a hard crash of the API process, or
during a database outage that outlasts the process, is lost. A graceful shutdown drains
the queue first. That is acceptable for the pixel and the click only: mail clients fire
and forget them and never retry. Provider callbacks and the unsubscribe POST stay
synchronous, because providers retry on an error and a person waits for the unsubscribe.

Nothing is dropped silently while the process lives: a failed batch (database down) is
retried with backoff, logged; when the queue is full a hit is recorded in the request,
as before this queue existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.engine import Engine

from api.engagement import signal_reached
from core.lifecycle import Observation
from dispatching.temporal import TemporalGateway
from store.lifecycle import Reached, record_batch
from store.models import utcnow

log = logging.getLogger(__name__)


class ObservationRecorder:
    """A bounded in-memory queue of hits in front of ``store.lifecycle.record_batch``."""

    def __init__(
        self,
        engine: Engine,
        gateway: TemporalGateway,
        *,
        max_queue: int = 50_000,
        batch_size: int = 500,
        max_wait: float = 0.05,
        max_backoff: float = 5.0,
    ) -> None:
        self.engine = engine
        self.gateway = gateway
        self.queue: asyncio.Queue[Observation] = asyncio.Queue(max_queue)
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.max_backoff = max_backoff
        # Counters for tests and the bench.
        self.queued = 0  # hits put in the queue
        self.recorded = 0  # of those, committed (stored, duplicate or unknown delivery)
        self.batches = 0  # committed batches
        self.failures = 0  # failed attempts at a batch, each retried
        self.inline = 0  # hits recorded in the request because the queue was full
        self._done = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._signals: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        # One writer: on SQLite writes are serial anyway, and batches stay in arrival order.
        self._task = asyncio.create_task(self._drain(), name="observation-recorder")

    async def submit(self, obs: Observation) -> None:
        """Queue the hit without waiting; a full queue (or a stopped one) records it here."""
        # The hit's own time, not the time its batch is written.
        if obs.occurred_at is None:
            obs = replace(obs, occurred_at=utcnow())
        if not self._closed:
            try:
                self.queue.put_nowait(obs)
                self.queued += 1
                return
            except asyncio.QueueFull:
                log.warning("observation queue full; recording a %s in the request", obs.kind)
        self.inline += 1
        recorded = await run_in_threadpool(record_batch, self.engine, [obs])
        self._signal(recorded.reached)

    async def flush(self) -> None:
        """Wait until every hit queued so far is committed and its signals are sent."""
        target = self.queued
        async with self._done:
            await self._done.wait_for(lambda: self.recorded >= target)
        if self._signals:
            await asyncio.gather(*list(self._signals), return_exceptions=True)

    async def stop(self, drain_for: float = 10.0) -> None:
        """Record what is queued before the engine goes away; log what could not be."""
        self._closed = True
        try:
            await asyncio.wait_for(self.flush(), drain_for)
        except TimeoutError:
            log.error(
                "observation recorder stopped with %d hits not recorded (database down?)",
                self.queued - self.recorded,
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._signals:
            await asyncio.wait(list(self._signals), timeout=drain_for)

    async def _next_batch(self) -> list[Observation]:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.batch_size:
            if self.queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            else:
                batch.append(self.queue.get_nowait())
        return batch

    async def _drain(self) -> None:
        while True:
            batch = await self._next_batch()
            await self._write(batch)
            async with self._done:
                self.recorded += len(batch)
                self.batches += 1
                self._done.notify_all()

    async def _write(self, batch: list[Observation]) -> None:
        """Commit the batch, retrying with backoff until the database takes it."""
        delay, attempt = 0.1, 1
        while True:
            try:
                recorded = await run_in_threadpool(record_batch, self.engine, batch)
                break
            except Exception:
                self.failures += 1
                log.exception(
                    "could not record %d tracking hits (attempt %d); retrying in %.1f s",
                    len(batch),
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
                delay, attempt = min(delay * 2, self.max_backoff), attempt + 1
        if attempt > 1:
            log.warning("recorded %d tracking hits at attempt %d", len(batch), attempt)
        self._signal(recorded.reached)

    def _signal(self, reached: list[Reached]) -> None:
        """Wake waiting workflows without holding up the next batch."""
        if not any(r.watches_engagement for r in reached):
            return
        task = asyncio.create_task(signal_reached(self.gateway, reached))
        self._signals.add(task)
        task.add_done_callback(self._signals.discard)
