"""Herald's Prometheus metrics, kept by each process and served by the API and the worker.

Every process (API, worker, broker consumer) counts into prometheus-client's default
registry; the API serves it at ``/metrics``, the worker on ``HERALD_WORKER_METRICS_PORT``.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

EVENTS_ACCEPTED = Counter(
    "herald_events_accepted", "Events stored (new ones, not repeats of a key)", ["tenant", "type"]
)
DB_STATEMENTS = Counter("herald_db_statements", "SQL statements sent to the database")
DB_TRANSACTIONS = Counter("herald_db_transactions", "Database transactions ended", ["outcome"])
DELIVERIES = Counter(
    "herald_deliveries",
    "Delivery outcomes and later stages (sent, failed, skipped, delivered, opened, clicked…)",
    ["channel", "provider", "status"],
)
PROVIDER_LATENCY = Histogram(
    "herald_provider_call_seconds",
    "One call to a provider's API, by outcome (ok, transient, permanent)",
    ["channel", "provider", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_LIMIT_WAIT = Histogram(
    "herald_rate_limit_wait_seconds",
    "Time a send waited for its channel's rate limit in this worker",
    ["channel"],
    buckets=(0, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
OUTBOX_LAG = Histogram(
    "herald_outbox_lag_seconds",
    "From an event's acceptance to its workflows being started",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300),
)
OUTBOX_HELD = Histogram(
    "herald_outbox_held_seconds",
    "Time a workflow start gave way to a burst of accepts (HERALD_DISPATCH_GIVE_WAY_AT)",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10),
)
OUTBOX_QUEUED = Gauge("herald_outbox_queued", "Accepted events waiting to be handed to Temporal")
DEAD_LETTERS = Gauge(
    "herald_dead_letters_waiting",
    "Failed deliveries still open for a retry signal (within the dead-letter retention)",
    ["channel"],
)


def count_delivery(channel: str, provider: str | None, status: str) -> None:
    DELIVERIES.labels(channel, provider or "none", status).inc()


class ScrapedMetrics(Collector):
    """Re-serves another exposition endpoint of this process (the Temporal SDK's, bound on
    loopback), so one scrape of the worker's port has Herald's and the SDK's metrics."""

    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:  # noqa: S310
                text = response.read().decode()
        except OSError as exc:
            log.warning("cannot read the SDK's metrics at %s: %s", self.url, exc)
            return
        yield from text_string_to_metric_families(text)


def serve_sdk_metrics(url: str) -> None:
    REGISTRY.register(ScrapedMetrics(url))


def count_statements(engine: Engine) -> None:
    """Count the engine's statements and transactions: the cost of a notification in writes."""

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(*_: Any) -> None:
        DB_STATEMENTS.inc()

    @event.listens_for(engine, "commit")
    def _commit(_conn: Any) -> None:
        DB_TRANSACTIONS.labels("commit").inc()

    @event.listens_for(engine, "rollback")
    def _rollback(_conn: Any) -> None:
        DB_TRANSACTIONS.labels("rollback").inc()
