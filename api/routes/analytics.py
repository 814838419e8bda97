"""Delivery analytics over the hourly rollups, and the top failure and bounce reasons."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ReadSessionDep, TenantDep, TextQuery, field_error
from core.types import Channel
from store.analytics import (
    MAX_TIME_BUCKETS,
    AnalyticsReport,
    GroupBy,
    ReasonsReport,
    analytics,
    as_utc,
    bucket_count,
    top_reasons,
)
from store.models import IsoDateTime, utcnow

router = APIRouter(tags=["analytics"])

DEFAULT_WINDOW = timedelta(days=7)


@router.get("/v1/analytics", response_model=AnalyticsReport)
def get_analytics(
    session: ReadSessionDep,
    tenant: TenantDep,
    since: Annotated[
        IsoDateTime | None, Query(description="Start (rounds down to the hour); until - 7 days")
    ] = None,
    until: Annotated[IsoDateTime | None, Query(description="End, exclusive; now")] = None,
    group_by: GroupBy = GroupBy.DAY,
    flow: TextQuery = None,
    channel: Channel | None = None,
    category: TextQuery = None,
) -> AnalyticsReport:
    """Sent, delivered, bounced, failed, opened, clicked per group, with rates and latency.

    Deliveries count in the hour they were sent, so a window compares like with like.
    """
    start, end = _window(since, until)
    if bucket_count(start, end, group_by) > MAX_TIME_BUCKETS:
        raise field_error(
            ["query", "since"],
            f"the window holds more than {MAX_TIME_BUCKETS} {group_by}s",
            "window_too_large",
        )
    return analytics(
        session,
        tenant,
        since=start,
        until=end,
        group_by=group_by,
        flow=flow,
        channel=None if channel is None else channel.value,
        category=category,
    )


@router.get("/v1/analytics/reasons", response_model=ReasonsReport)
def get_reasons(
    session: ReadSessionDep,
    tenant: TenantDep,
    since: IsoDateTime | None = None,
    until: IsoDateTime | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> ReasonsReport:
    """The most common failure and bounce reasons of deliveries updated in the window."""
    start, end = _window(since, until)
    return top_reasons(session, tenant, start, end, limit)


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    end = utcnow() if until is None else as_utc(until)
    start = end - DEFAULT_WINDOW if since is None else as_utc(since)
    if start >= end:
        raise field_error(["query", "since"], "since must be before until", "window_order")
    return start, end
