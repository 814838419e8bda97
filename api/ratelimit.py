"""Per-tenant request rate limit: a token bucket per tenant, in this API process only.

Each API process keeps its own buckets, so N processes behind a load balancer allow up to
N times ``HERALD_TENANT_RATE_LIMIT`` in total.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from core.settings import Settings


class TenantRateLimiter:
    """``rate`` tokens a second, at most ``burst`` saved up, one token per request."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock  # injectable so tests step time instead of sleeping
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, as of)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantRateLimiter | None:
        if settings.tenant_rate_limit is None:
            return None
        return cls(settings.tenant_rate_limit, settings.tenant_rate_capacity)

    def acquire(self, tenant: str) -> float:
        """Take a token: 0.0 if allowed, else how many seconds until one is available."""
        with self._lock:
            now = self.clock()
            tokens, since = self._buckets.get(tenant, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - since) * self.rate)
            if tokens >= 1.0 - 1e-9:  # float sums of exact refills land just under
                self._buckets[tenant] = (max(tokens - 1.0, 0.0), now)
                return 0.0
            self._buckets[tenant] = (tokens, now)
            return (1.0 - tokens) / self.rate


def retry_after_seconds(wait: float) -> int:
    """The ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))
