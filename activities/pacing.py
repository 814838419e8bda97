"""Even spacing of provider calls within one worker process.

Temporal's task-queue rate limit holds the average across every worker, but it is a
token bucket: after a quiet spell it lets a second's worth of tasks out at once, and a
1-second window can then see up to twice the rate. The pacer lets calls go at most one
per ``1/rate`` seconds in this process; the queue-wide limit still caps the sum over
processes.
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

    def claim(self) -> float | None:
        """Take the turn if it is due (returns its time), else None: wait ``pause()``."""
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                return None
            self._next = now + self.interval
            return now

    def pause(self) -> float:
        """How long until the next turn is due."""
        with self._lock:
            return max(0.0, self._next - time.monotonic())

    def wait(self) -> float:
        """Block until this caller's turn; returns when it was taken (``time.monotonic()``).

        The turn is claimed after waking, not booked before sleeping: when the process
        stalls (the GIL, a busy machine), callers that wake late together still go one
        interval apart instead of all at once.
        """
        while (taken := self.claim()) is None:
            time.sleep(self.pause())
        return taken
