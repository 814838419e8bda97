"""Herald's Prometheus metrics, kept by each process and served by the API and the worker.

Every process (API, worker, broker consumer) counts into prometheus-client's default
registry; the API serves it at ``/metrics``, the worker on ``HERALD_WORKER_METRICS_PORT``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from sqlalchemy import event
from sqlalchemy.engine import Engine

EVENTS_ACCEPTED = Counter(
    "herald_events_accepted", "Events stored (new ones, not repeats of a key)", ["tenant", "type"]
)
DB_STATEMENTS = Counter("herald_db_statements", "SQL statements sent to the database")
DB_TRANSACTIONS = Counter("herald_db_transactions", "Database transactions ended", ["outcome"])


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
