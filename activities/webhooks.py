"""What the send activities add to a webhook: the tenant's secrets and a per-tenant bound.

Secrets are read from the store for every send (one primary-key read): a cache would
keep signing with the old secret alone for a while after a rotation, and a receiver that
switched to the new one at once would refuse those deliveries.

The bound keeps one tenant's slow receiver from holding every activity slot of a worker.
A send over the bound is not made to wait: a waiting activity holds its slot as surely as
a sending one, so a backlog of one tenant's waiters would starve everyone else just the
same. It gives its slot back at once with a retryable error instead, and Temporal runs it
again after the retry policy's own backoff, jittered so a burst's bounces do not return in
lockstep. A short fixed delay would make a big backlog spin through the task queue (work
for the server and every worker, at every tenant's expense) and spend the attempt budget
within seconds; backing off spends it over the policy's span, as a slow receiver would.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from channels.base import ChannelAdapter, Message
from channels.webhook import WebhookAdapter, with_secrets
from core.settings import Settings
from core.webhook_settings import starts_with_shared_secret
from store.db import read_scope, session_scope
from store.webhook_secrets import (
    WebhookSecret,
    seed_secrets,
    signing_secrets,
    tenant_signing_secrets,
)

# ApplicationError type of a send bounced by the per-tenant bound (retryable).
TENANT_BUSY = "TenantBusy"


class TenantBound:
    """At most ``limit`` sends in flight per tenant in this process."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def try_acquire(self, tenant: str) -> bool:
        with self._lock:
            n = self._in_flight.get(tenant, 0)
            if n >= self.limit:
                return False
            self._in_flight[tenant] = n + 1
            return True

    def release(self, tenant: str) -> None:
        with self._lock:
            n = self._in_flight.get(tenant, 0) - 1
            if n > 0:
                self._in_flight[tenant] = n
            else:
                self._in_flight.pop(tenant, None)

    def in_flight(self, tenant: str) -> int:
        with self._lock:
            return self._in_flight.get(tenant, 0)

    @contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        """A slot for one send, or a retryable ``TenantBusy`` error at once."""
        if not self.try_acquire(tenant):
            raise ApplicationError(
                f"tenant {tenant} already has {self.limit} webhook sends in flight on this "
                "worker (HERALD_WEBHOOK_TENANT_CONCURRENCY); trying again later",
                type=TENANT_BUSY,
                next_retry_delay=bounce_delay(),
            )
        try:
            yield
        finally:
            self.release(tenant)


def bounce_delay() -> timedelta:
    """The retry policy's backoff for this attempt, times a random 0.5 to 1.5."""
    info = activity.info()
    policy = info.retry_policy
    if policy is None:
        initial, coefficient, cap = timedelta(seconds=1), 2.0, timedelta(minutes=1)
    else:
        initial, coefficient = policy.initial_interval, policy.backoff_coefficient
        cap = policy.maximum_interval or initial * 100
    exponent = min(max(info.attempt - 1, 0), 32)
    base = min(initial.total_seconds() * coefficient**exponent, cap.total_seconds())
    return timedelta(seconds=base * random.uniform(0.5, 1.5))


class WebhookSends:
    """Per worker process: signs webhooks with their tenant's secrets, bounds each tenant."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        limit = settings.webhook_tenant_concurrency
        if limit is None:
            limit = max(1, settings.worker_max_concurrent_activities // 4)
        self.bound = TenantBound(limit)

    def secrets(self, tenant: str) -> tuple[str, ...]:
        with read_scope(self.engine) as session:
            row = session.get(WebhookSecret, tenant)
            if row is not None:
                return signing_secrets(row)
        with session_scope(self.engine) as session:  # the tenant's first webhook
            # The API seeds these at start; a worker may get there first (a retry left
            # over from before an upgrade) and must make the same choice.
            if starts_with_shared_secret(self.settings, tenant):
                seed_secrets(session, [tenant], self.settings.webhook_secret.get_secret_value())
            return tenant_signing_secrets(session, tenant)

    def sign(self, adapter: ChannelAdapter, message: Message) -> Message:
        """The message with its tenant's secrets, if ``adapter`` sends real webhooks."""
        if not isinstance(adapter, WebhookAdapter):
            return message
        return with_secrets(message, self.secrets(message.tenant_id))

    def sign_all(self, adapter: ChannelAdapter, messages: list[Message]) -> list[Message]:
        """``sign`` for a batch, reading each tenant's secrets once."""
        if not isinstance(adapter, WebhookAdapter):
            return messages
        found = {t: self.secrets(t) for t in dict.fromkeys(m.tenant_id for m in messages)}
        return [with_secrets(m, found[m.tenant_id]) for m in messages]

    @contextmanager
    def turn(self, adapter: ChannelAdapter, tenant: str) -> Iterator[None]:
        """The per-tenant bound around one single send (a broadcast batch holds one slot
        whatever its size, so it is not bounded here)."""
        if not isinstance(adapter, WebhookAdapter):
            yield
            return
        with self.bound.hold(tenant):
            yield
