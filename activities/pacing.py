"""Even spacing of provider calls within one worker process.

Temporal's task-queue rate limit holds the average across every worker, but it is a
token bucket: after a quiet spell it lets a second's worth of tasks out at once, and a
1-second window can then see up to twice the rate. The pacer gives each call its own
slot, ``1/rate`` apart, so one process never bursts; the queue-wide limit still caps
the sum over processes.
"""

from __future__ import annotations

import threading
import time


class Pacer:
    def __init__(self, per_second: float) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.interval = 1.0 / per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Claim the next free slot: a ``time.monotonic()`` instant, now or later."""
        with self._lock:
            slot = max(time.monotonic(), self._next)
            self._next = slot + self.interval
            return slot

    def wait(self) -> None:
        delay = self.reserve() - time.monotonic()
        if delay > 0:
            time.sleep(delay)
