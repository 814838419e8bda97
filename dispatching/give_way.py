"""Workflow starts give way to accepts while a burst is being accepted.

A start costs the API about as much CPU as an accept, and what it starts takes Temporal's
and the worker's CPU, on cores the API may share. Under a burst the accepts then queue
behind both. A start waits while ``at`` or more accepts are in flight, for at most
``max_hold`` after it was queued, so a short burst is accepted at the speed the API has
alone. A burst longer than ``max_hold`` gets the contention back after it. In the bench's
bursts only the first delivery came later: Temporal, not the API, sets the pace of
delivery (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from core.metrics import OUTBOX_HELD

# A burst is over once fewer than ``at`` accepts were in flight for QUIET, or IDLE after the
# count reached none (unless ``at`` were in flight again by then). The count dips for a
# moment whenever a group commit answers its batch at once; each dip let starts through,
# and each start's workflow costs Temporal and the worker tens of ms of CPU. None in flight
# ends a spike of clients that posted at once and now wait.
QUIET = 0.1
IDLE = 0.01


class GiveWay:
    def __init__(self, at: int, max_hold: float) -> None:
        self.at = at  # 0: starts never wait
        self.max_hold = max_hold
        self.in_flight = 0
        self._calm = asyncio.Event()
        self._calm.set()
        self._settling: asyncio.TimerHandle | None = None

    @contextlib.contextmanager
    def accepting(self) -> Iterator[None]:
        self.in_flight += 1
        if self.at and self.in_flight >= self.at:
            self._calm.clear()
            if self._settling is not None:
                self._settling.cancel()
                self._settling = None
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight < self.at and not self._calm.is_set():
                self._settle_after(IDLE if self.in_flight == 0 else QUIET)

    def _settle_after(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self._settling is not None:
            if self._settling.when() <= when:
                return
            self._settling.cancel()
        self._settling = loop.call_at(when, self._settle)

    def _settle(self) -> None:
        self._settling = None
        self._calm.set()

    async def wait(self, queued_at: float) -> None:
        """Until the burst is over, or ``max_hold`` after ``queued_at`` (``time.monotonic()``)."""
        if self._calm.is_set():
            return
        began = time.monotonic()
        remaining = queued_at + self.max_hold - began
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._calm.wait(), remaining)
            OUTBOX_HELD.observe(time.monotonic() - began)
