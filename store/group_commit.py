"""Concurrent accepts share one transaction (``store.intake.accept_many``).

SQLite takes one write at a time, and a transaction per event made concurrent writers queue
on its lock. While one batch commits, the next gathers, so the batch size follows the load
with no timer: a lone event commits at once. The broker consumer and ``POST /v1/events`` use it.
"""

from __future__ import annotations

import asyncio

import anyio.to_thread
from sqlalchemy.engine import Engine

from store.events import AcceptedEvent
from store.intake import AcceptRequest, accept_many


class GroupCommit:
    def __init__(self, engine: Engine, max_batch: int = 200) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._waiting: list[tuple[str, AcceptRequest, asyncio.Future[AcceptedEvent]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def accept(self, tenant: str, request: AcceptRequest) -> AcceptedEvent:
        """The event once committed; raises what refused it, or what the database raised."""
        future: asyncio.Future[AcceptedEvent] = asyncio.get_running_loop().create_future()
        self._waiting.append((tenant, request, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            by_tenant: dict[str, list[tuple[AcceptRequest, asyncio.Future[AcceptedEvent]]]] = {}
            for tenant, request, future in batch:
                by_tenant.setdefault(tenant, []).append((request, future))
            for tenant, items in by_tenant.items():
                requests = [r for r, _ in items]
                try:
                    results = await anyio.to_thread.run_sync(
                        accept_many, self.engine, tenant, requests
                    )
                except Exception as exc:  # the database is down: every event of it waits
                    for _, future in items:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(items, results, strict=True):
                    if future.done():
                        continue  # given up on (a cancelled request or message handler)
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
