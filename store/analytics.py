"""Analytics over the hourly rollups: counts, rates and latency per flow, channel or time.

Counts come from ``delivery_rollups`` only (one SUM ... GROUP BY), never from a scan of
the deliveries, so the cost follows the number of rollup rows in the window. Days are
folded from hours here rather than in SQL, because SQLite and PostgreSQL truncate
dates differently and an hour row is already the finest grain we keep.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, SQLModel, col

from core.types import DeliveryStatus
from store.models import Delivery
from store.rollups import COUNTERS, LATENCY_COLUMNS, delivery_rollups, hour_of, percentile


class GroupBy(StrEnum):
    FLOW = "flow"
    CHANNEL = "channel"
    PROVIDER = "provider"
    DAY = "day"
    HOUR = "hour"


# The rollup column each non-time grouping reads.
_DIMENSION = {
    GroupBy.FLOW: "flow_key",
    GroupBy.CHANNEL: "channel",
    GroupBy.PROVIDER: "provider",
}
# Time groupings are zero-filled over the window; this bounds the answer's size.
MAX_TIME_BUCKETS = 5000
# Statuses whose reason the dashboard lists (a failed send, a bounce, an undelivered SMS).
PROBLEM_STATUSES = (DeliveryStatus.FAILED, DeliveryStatus.BOUNCED, DeliveryStatus.UNDELIVERED)


# --- API shapes -------------------------------------------------------------------


class Latency(SQLModel):
    """Accept-to-delivered time in ms, interpolated from the latency histogram."""

    p50: float | None = None
    p95: float | None = None


class Metrics(SQLModel):
    sent: int = 0
    delivered: int = 0
    bounced: int = 0
    failed: int = 0
    opened: int = 0
    clicked: int = 0
    unsubscribed: int = 0
    complained: int = 0
    # Null when the denominator is zero: "no data" is not "0 %".
    delivery_rate: float | None = None  # delivered / sent
    open_rate: float | None = None  # opened / delivered
    click_rate: float | None = None  # clicked / delivered (click-through)
    click_to_open_rate: float | None = None  # clicked / opened
    latency_ms: Latency = Latency()


class _Key(SQLModel):
    # A flow key, channel, provider ("" for none), UTC day (YYYY-MM-DD) or hour (ISO 8601).
    key: str


class GroupMetrics(Metrics, _Key):
    """One group's metrics; the key comes first in the JSON."""


class AnalyticsReport(SQLModel):
    since: datetime
    until: datetime
    group_by: GroupBy
    groups: list[GroupMetrics]
    totals: Metrics


class ReasonCount(SQLModel):
    status: str
    reason: str
    count: int


class ReasonsReport(SQLModel):
    since: datetime
    until: datetime
    reasons: list[ReasonCount]


# --- pure parts -------------------------------------------------------------------


@dataclass
class Tally:
    """Summed counters and latency histogram of some rollup rows."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    histogram: list[int] = field(default_factory=lambda: [0] * len(LATENCY_COLUMNS))

    @classmethod
    def of(cls, row: Any) -> Tally:
        """From a result row holding every counter and latency column (None counts 0)."""
        m = row._mapping
        return cls(
            counts={c: int(m[c] or 0) for c in COUNTERS},
            histogram=[int(m[c] or 0) for c in LATENCY_COLUMNS],
        )

    def add(self, other: Tally) -> None:
        for c, n in other.counts.items():
            self.counts[c] += n
        self.histogram = [a + b for a, b in zip(self.histogram, other.histogram, strict=True)]


def ratio(num: int, den: int) -> float | None:
    return None if den <= 0 else num / den


def metrics(tally: Tally) -> dict[str, Any]:
    """Counts, rates and latency percentiles of one tally, as ``Metrics`` fields."""
    c = tally.counts
    p50, p95 = percentile(tally.histogram, 0.50), percentile(tally.histogram, 0.95)
    return {
        **{k: c[k] for k in COUNTERS},
        "delivery_rate": ratio(c["delivered"], c["sent"]),
        "open_rate": ratio(c["opened"], c["delivered"]),
        "click_rate": ratio(c["clicked"], c["delivered"]),
        "click_to_open_rate": ratio(c["clicked"], c["opened"]),
        "latency_ms": Latency(
            p50=None if p50 is None else round(p50, 1),
            p95=None if p95 is None else round(p95, 1),
        ),
    }


def as_utc(at: datetime) -> datetime:
    """Aware UTC; a naive datetime from a query string is taken to be UTC already."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def day_of(at: datetime) -> datetime:
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def time_key(at: datetime, group_by: GroupBy) -> str:
    if group_by == GroupBy.DAY:
        return day_of(at).date().isoformat()
    return hour_of(at).strftime("%Y-%m-%dT%H:00:00Z")


def time_buckets(since: datetime, until: datetime, group_by: GroupBy) -> list[str]:
    """Every day or hour bucket that overlaps [since, until), oldest first."""
    step = timedelta(days=1) if group_by == GroupBy.DAY else timedelta(hours=1)
    at = day_of(since) if group_by == GroupBy.DAY else hour_of(since)
    keys = []
    while at < until:
        keys.append(time_key(at, group_by))
        at += step
    return keys


def bucket_count(since: datetime, until: datetime, group_by: GroupBy) -> int:
    """How many groups ``time_buckets`` would return, without building them."""
    if group_by not in (GroupBy.DAY, GroupBy.HOUR):
        return 0
    step = timedelta(days=1) if group_by == GroupBy.DAY else timedelta(hours=1)
    start = day_of(since) if group_by == GroupBy.DAY else hour_of(since)
    return max(0, -((start - until) // step))


def fold(rows: Iterable[tuple[str, Tally]]) -> dict[str, Tally]:
    """Sum tallies that share a key (hours into days, for one)."""
    out: dict[str, Tally] = {}
    for key, tally in rows:
        out.setdefault(key, Tally()).add(tally)
    return out


def report(
    tallies: dict[str, Tally], since: datetime, until: datetime, group_by: GroupBy
) -> AnalyticsReport:
    """Groups in a stable order (time: zero-filled, oldest first; else by volume) and totals."""
    if group_by in (GroupBy.DAY, GroupBy.HOUR):
        keys = time_buckets(since, until, group_by)
    else:
        keys = sorted(tallies, key=lambda k: (-tallies[k].counts["sent"], k))
    total = Tally()
    for t in tallies.values():
        total.add(t)
    groups = [GroupMetrics(key=k, **metrics(tallies.get(k) or Tally())) for k in keys]
    return AnalyticsReport(
        since=since, until=until, group_by=group_by, groups=groups, totals=Metrics(**metrics(total))
    )


# --- queries ----------------------------------------------------------------------


def analytics(
    session: Session,
    tenant_id: str,
    *,
    since: datetime,
    until: datetime,
    group_by: GroupBy = GroupBy.DAY,
    flow: str | None = None,
    channel: str | None = None,
    category: str | None = None,
) -> AnalyticsReport:
    """Counts, rates and latency per group over the rollup hours that overlap [since, until).

    ``since`` rounds down to its hour (a rollup row covers a whole hour); ``until`` is
    exclusive. The caller checks ``since < until``.
    """
    since, until = hour_of(as_utc(since)), as_utc(until)
    r = delivery_rollups.c
    key_col = r.hour if group_by in (GroupBy.DAY, GroupBy.HOUR) else r[_DIMENSION[group_by]]
    stmt = (
        sa_select(
            key_col.label("key"),
            *(func.sum(r[c]).label(c) for c in (*COUNTERS, *LATENCY_COLUMNS)),
        )
        .where(r.tenant_id == tenant_id, r.hour >= since, r.hour < until)
        .group_by(key_col)
    )
    for column, value in (("flow_key", flow), ("channel", channel), ("category", category)):
        if value is not None:
            stmt = stmt.where(r[column] == value)
    rows = session.execute(stmt).all()
    if group_by in (GroupBy.DAY, GroupBy.HOUR):
        tallies = fold((time_key(row.key, group_by), Tally.of(row)) for row in rows)
    else:
        tallies = fold((str(row.key), Tally.of(row)) for row in rows)
    return report(tallies, since, until, group_by)


def top_reasons(
    session: Session, tenant_id: str, since: datetime, until: datetime, limit: int = 10
) -> ReasonsReport:
    """The most common failure and bounce reasons among deliveries updated in [since, until).

    This one reads deliveries, bounded by tenant, the three problem statuses and the
    update time; only problem rows are touched, and the answer is capped at ``limit``.
    """
    since, until = as_utc(since), as_utc(until)
    n = func.count().label("n")
    stmt = (
        sa_select(col(Delivery.status), col(Delivery.reason), n)
        .where(
            col(Delivery.tenant_id) == tenant_id,
            col(Delivery.status).in_([s.value for s in PROBLEM_STATUSES]),
            col(Delivery.updated_at) >= since,
            col(Delivery.updated_at) < until,
        )
        .group_by(col(Delivery.status), col(Delivery.reason))
        .order_by(n.desc(), col(Delivery.status), col(Delivery.reason))
        .limit(limit)
    )
    reasons = [
        ReasonCount(status=status, reason=reason or status, count=count)
        for status, reason, count in session.execute(stmt).all()
    ]
    return ReasonsReport(since=since, until=until, reasons=reasons)
