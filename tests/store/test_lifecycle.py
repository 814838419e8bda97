"""The delivery lifecycle rules, against the real database (SQLite or PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from core.lifecycle import Kind, Observation, Source
from core.types import DeliveryStatus, NotificationStatus, new_id, outcome
from store.db import read_scope, session_scope
from store.deliveries import history, load_context, reopen, transition
from store.lifecycle import Sent, mark_sent, mark_sent_many, record_batch
from store.models import Delivery, Event, Notification, Subscriber, utcnow
from store.rollups import (
    BOUNDS_MS,
    COUNTERS,
    LATENCY_COLUMNS,
    Increments,
    delivery_rollups,
    latency_bucket,
    percentile,
)
from tests.conftest import unique

T0 = datetime(2026, 11, 20, 10, 15, tzinfo=UTC)


def _delivery(engine: Engine, channel: str = "email", email: str = "ada@example.com") -> Delivery:
    tenant = unique("tenant")
    with session_scope(engine) as s:
        s.add(Subscriber(tenant_id=tenant, id="ada", email=email))
        # Dispatched: an outbox sweep in a later test must not try to start it.
        event = Event(
            id=new_id("evt"), tenant_id=tenant, type="t", fingerprint="x", dispatched_at=utcnow()
        )
        s.add(event)
        s.flush()
        n = Notification(
            id=new_id("ntf"),
            tenant_id=tenant,
            event_id=event.id,
            flow_key="welcome",
            subscriber_id="ada",
            workflow_id=unique("wf"),
            category="marketing",
        )
        s.add(n)
        s.flush()
        d = Delivery(
            id=new_id("dlv"),
            tenant_id=tenant,
            notification_id=n.id,
            step_index=0,
            channel=channel,
            created_at=T0 - timedelta(seconds=2),
        )
        s.add(d)
    return d


def _sent(engine: Engine, d: Delivery, provider_message_id: str = "pm-1") -> Delivery:
    with session_scope(engine) as s:
        return mark_sent(
            s,
            d.id,
            flow_key="welcome",
            category="marketing",
            attempts=1,
            provider="sendgrid",
            provider_message_id=provider_message_id,
        )


def _row(engine: Engine, d: Delivery) -> Delivery:
    with read_scope(engine) as s:
        row = s.get(Delivery, d.id)
        assert row is not None
        return row


def _counts(engine: Engine, tenant: str) -> dict[str, int]:
    cols = [func.coalesce(func.sum(delivery_rollups.c[c]), 0) for c in COUNTERS]
    with read_scope(engine) as s:
        row = s.execute(select(*cols).where(delivery_rollups.c.tenant_id == tenant)).one()
    return dict(zip(COUNTERS, (int(v) for v in row), strict=True))


def _obs(kind: Kind, d: Delivery, at: datetime | None = None, **kw: object) -> Observation:
    return Observation(kind, Source.SENDGRID, d.id, occurred_at=at, **kw)  # type: ignore[arg-type]


def test_status_moves_forward_only_and_keeps_every_report(engine: Engine) -> None:
    d = _sent(engine, _delivery(engine))
    record_batch(engine, [_obs(Kind.OPENED, d, T0 + timedelta(minutes=5))])
    late = record_batch(engine, [_obs(Kind.DELIVERED, d, T0 + timedelta(minutes=1))])

    row = _row(engine, d)
    assert row.status == DeliveryStatus.OPENED
    # The open implied delivery; the late "delivered" changed nothing but the history.
    assert row.delivered_at == T0 + timedelta(minutes=5)
    assert late.reached == []
    with read_scope(engine) as s:
        kinds = [(e.status, e.source) for e in history(s, d.id)]
    assert kinds == [("sent", "herald"), ("opened", "sendgrid"), ("delivered", "sendgrid")]
    counts = _counts(engine, d.tenant_id)
    assert (counts["sent"], counts["delivered"], counts["opened"]) == (1, 1, 1)


def test_refusals_outrank_delivery_and_engagement_outranks_refusals(engine: Engine) -> None:
    d = _sent(engine, _delivery(engine))
    record_batch(engine, [_obs(Kind.DELIVERED, d)])
    record_batch(engine, [_obs(Kind.BOUNCED, d, detail="550 mailbox gone")])
    row = _row(engine, d)
    assert (row.status, row.reason) == (DeliveryStatus.BOUNCED, "550 mailbox gone")
    record_batch(engine, [_obs(Kind.CLICKED, d, url="https://example.com/a")])
    row = _row(engine, d)
    assert row.status == DeliveryStatus.CLICKED
    assert row.opened_at is not None and row.clicked_at is not None
    counts = _counts(engine, d.tenant_id)
    assert (counts["bounced"], counts["opened"], counts["clicked"]) == (1, 1, 1)


def test_the_same_provider_event_counts_once(engine: Engine) -> None:
    d = _sent(engine, _delivery(engine))
    twice = [_obs(Kind.OPENED, d, external_id=f"sg-{d.id}")] * 2
    first = record_batch(engine, twice)
    again = record_batch(engine, twice[:1])
    assert (first.stored, first.duplicates) == (1, 1)
    assert (again.stored, again.duplicates) == (0, 1)
    with read_scope(engine) as s:
        assert [e.status for e in history(s, d.id)] == ["sent", "opened"]
    assert _counts(engine, d.tenant_id)["opened"] == 1


def test_a_report_before_the_send_is_recorded_is_applied_when_it_is(engine: Engine) -> None:
    d = _delivery(engine)
    early = T0 + timedelta(seconds=1)
    result = record_batch(engine, [_obs(Kind.DELIVERED, d, early)])
    assert result.stored == 1 and result.reached == []
    assert _row(engine, d).status == DeliveryStatus.PENDING

    sent = _sent(engine, d)

    assert sent.status == DeliveryStatus.DELIVERED
    assert sent.delivered_at == early
    assert sent.early_events is False
    counts = _counts(engine, d.tenant_id)
    assert (counts["sent"], counts["delivered"]) == (1, 1)


def test_a_callback_found_by_provider_message_id_and_tenant_checked(engine: Engine) -> None:
    d = _sent(engine, _delivery(engine), provider_message_id=unique("pm"))
    by_pm = Observation(Kind.DELIVERED, Source.SENDGRID, provider_message_id=d.provider_message_id)
    wrong_tenant = Observation(Kind.OPENED, Source.APP, d.id, tenant_id="someone-else")
    unknown = Observation(Kind.OPENED, Source.APP, "dlv_nope")
    result = record_batch(engine, [by_pm, wrong_tenant, unknown])
    assert result.stored == 1
    assert result.unknown == [wrong_tenant, unknown]
    assert _row(engine, d).status == DeliveryStatus.DELIVERED


def test_a_hard_bounce_suppresses_the_address_until_it_changes(engine: Engine) -> None:
    d = _sent(engine, _delivery(engine, email="Ada@Example.com"))
    record_batch(engine, [_obs(Kind.BOUNCED, d, detail="no such user", suppress=True)])
    with read_scope(engine) as s:
        ctx = load_context(s, d.id)
        assert ctx is not None and ctx.suppression is not None
        assert ctx.suppression.reason.startswith("hard bounce from sendgrid")
    with session_scope(engine) as s:
        sub = s.get(Subscriber, (d.tenant_id, "ada"))
        assert sub is not None
        sub.email = "ada@new.example.com"
        s.add(sub)
    with read_scope(engine) as s:
        ctx = load_context(s, d.id)
        assert ctx is not None and ctx.suppression is None


def test_a_retried_failure_no_longer_counts_as_failed(engine: Engine) -> None:
    d = _delivery(engine)
    with session_scope(engine) as s:
        transition(s, d.id, DeliveryStatus.FAILED, detail="boom")
    assert _counts(engine, d.tenant_id)["failed"] == 1
    with session_scope(engine) as s:
        assert reopen(s, d.id, "retry requested") is not None
    assert _counts(engine, d.tenant_id)["failed"] == 0
    _sent(engine, d)
    assert _counts(engine, d.tenant_id)["sent"] == 1


def test_latency_lands_in_its_bucket(engine: Engine) -> None:
    d = _sent(engine, _delivery(engine))
    record_batch(engine, [_obs(Kind.DELIVERED, d, T0)])  # created 2 s before T0
    with read_scope(engine) as s:
        row = s.execute(
            select(*(delivery_rollups.c[c] for c in LATENCY_COLUMNS)).where(
                delivery_rollups.c.tenant_id == d.tenant_id
            )
        ).one()
    assert list(row).index(1) == latency_bucket(2000)


@pytest.mark.parametrize("ms", [1, 20, 21, 150, 2000, 60_000, 10**9])
def test_latency_buckets_hold_their_value(ms: float) -> None:
    i = latency_bucket(ms)
    lo = 0 if i == 0 else BOUNDS_MS[i - 1]
    hi = BOUNDS_MS[i] if i < len(BOUNDS_MS) else float("inf")
    assert lo < ms <= hi or (i == 0 and ms <= BOUNDS_MS[0])


def test_percentiles_interpolate_within_buckets() -> None:
    hist = [0] * len(LATENCY_COLUMNS)
    assert percentile(hist, 0.5) is None
    hist[latency_bucket(100)] = 50
    hist[latency_bucket(5000)] = 50
    p50, p95 = percentile(hist, 0.5), percentile(hist, 0.95)
    assert p50 is not None and p95 is not None
    assert BOUNDS_MS[latency_bucket(100) - 1] < p50 <= BOUNDS_MS[latency_bucket(100)]
    assert BOUNDS_MS[latency_bucket(5000) - 1] < p95 <= BOUNDS_MS[latency_bucket(5000)]


def test_a_refusal_after_the_send_makes_the_notification_failed() -> None:
    assert outcome([DeliveryStatus.CLICKED, DeliveryStatus.SKIPPED]) == NotificationStatus.SENT
    assert outcome([DeliveryStatus.DELIVERED, DeliveryStatus.BOUNCED]) == NotificationStatus.FAILED
    assert outcome([DeliveryStatus.UNDELIVERED]) == NotificationStatus.FAILED


def test_a_batch_is_marked_sent_in_one_statement_with_the_same_guards(engine: Engine) -> None:
    early, plain, done = _delivery(engine), _delivery(engine), _delivery(engine)
    record_batch(engine, [_obs(Kind.DELIVERED, early, T0)])
    _sent(engine, done)  # already sent: a repeated batch must not touch it
    incs = Increments()
    with session_scope(engine) as s:
        moved = mark_sent_many(
            s,
            [Sent(d.id, "sendgrid", "sg-batch-1") for d in (early, plain, done)],
            flow_key="welcome",
            category="marketing",
            attempts=1,
            incs=incs,
        )
        incs.flush(s)
    assert moved == 2
    assert _row(engine, early).status == DeliveryStatus.DELIVERED
    assert _row(engine, early).delivered_at == T0
    assert _row(engine, plain).provider_message_id == "sg-batch-1"
    assert _row(engine, done).provider_message_id == "pm-1"
    for d in (early, plain):
        with read_scope(engine) as s:
            assert [e.status for e in history(s, d.id)].count("sent") == 1
        counts = _counts(engine, d.tenant_id)
        assert counts["sent"] == 1
    assert _counts(engine, early.tenant_id)["delivered"] == 1
