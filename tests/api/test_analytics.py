"""Analytics over real sends: counts, rates, groups, filters and latency from the rollups."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.lifecycle import Kind, Observation, Source
from store.analytics import (
    GroupBy,
    Tally,
    bucket_count,
    fold,
    metrics,
    report,
    time_buckets,
    time_key,
)
from store.lifecycle import record_batch
from store.rollups import BOUNDS_MS, COUNTERS, LATENCY_BUCKETS, latency_bucket, percentile
from tests.conftest import Herald, unique
from tests.fakes.provider import FakeProvider

BOUNCE = "550 5.1.1 The email account that you tried to reach does not exist"
UNDELIVERED = "30003: Unreachable destination handset"

# What each seeded delivery adds to the rollups, and its dimensions.
CONTRIB: dict[str, dict[str, int]] = {
    "click": {"sent": 1, "delivered": 1, "opened": 1, "clicked": 1},
    "open": {"sent": 1, "delivered": 1, "opened": 1, "complained": 1},
    "unsub": {"sent": 1, "delivered": 1, "unsubscribed": 1},
    "bounce": {"sent": 1, "bounced": 1},
    "fail": {"failed": 1},
    "sms_ok": {"sent": 1, "delivered": 1},
    "sms_bad": {"sent": 1, "bounced": 1},
    "hook": {"sent": 1, "delivered": 1},
}
EMAIL = {"flow": "welcome", "channel": "email", "provider": "sendgrid", "category": "marketing"}
SMS = {"flow": "otp", "channel": "sms", "provider": "twilio", "category": "transactional"}
HOOK = {"flow": "hook", "channel": "webhook", "provider": "webhook", "category": "transactional"}
DIMS = {
    **dict.fromkeys(("click", "open", "unsub", "bounce", "fail"), EMAIL),
    "sms_ok": SMS,
    "sms_bad": SMS,
    "hook": HOOK,
}
TOTALS = {
    "sent": 7,
    "delivered": 5,
    "opened": 2,
    "clicked": 1,
    "bounced": 2,
    "failed": 1,
    "unsubscribed": 1,
    "complained": 1,
}


@dataclass
class Seeded:
    deliveries: dict[str, dict[str, Any]]  # name -> GET /v1/deliveries/{id}

    def cohort(self, name: str) -> datetime:
        """The hour a delivery counts in: when it was sent (or failed, never sent)."""
        d = self.deliveries[name]
        at = datetime.fromisoformat(d["sent_at"] or d["failed_at"])
        return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)

    def expected(self, key: str, **filters: str) -> dict[str, Counter[str]]:
        """The reference answer: each delivery's contribution summed by ``key``."""
        out: dict[str, Counter[str]] = {}
        for name, contrib in CONTRIB.items():
            dims = DIMS[name]
            if any(dims[f] != v for f, v in filters.items()):
                continue
            k = time_key(self.cohort(name), GroupBy(key)) if key in ("day", "hour") else dims[key]
            out.setdefault(k, Counter()).update(contrib)
        return out


async def seed(herald: Herald, provider: FakeProvider) -> Seeded:
    """Real sends through the API, Temporal and the fake providers, then their outcomes."""
    names = [*CONTRIB]
    subs = {n: unique(n.replace("_", "-")) for n in names}
    for i, n in enumerate(names):
        await herald.put_subscriber(
            subs[n],
            email=f"{subs[n]}@example.com",
            phone=f"+1415555{i:04d}",
            webhook_url=provider.webhook_url(subs[n]),
        )
    await herald.put_flow(
        "welcome",
        event_type="user.welcome",
        category="marketing",
        steps=[
            {
                "channel": "email",
                "subject": "Hi",
                "text": "hi",
                "html": '<a href="https://e.x/a">go</a>',
            }
        ],
    )
    await herald.put_flow("otp", event_type="auth.otp", steps=[{"channel": "sms", "text": "1"}])
    await herald.put_flow("hook", event_type="order.hook", steps=[{"channel": "webhook"}])
    provider.fail("sendgrid", 400, when=subs["fail"])  # a permanent refusal for that one
    published = [
        await herald.publish(type=t, to=[subs[n] for n in names if DIMS[n] is dims])
        for t, dims in (("user.welcome", EMAIL), ("auth.otp", SMS), ("order.hook", HOOK))
    ]
    ids: dict[str, str] = {}
    by_sub = {sid: n for n, sid in subs.items()}
    for accepted in published:
        event = await herald.wait_event(accepted["id"])
        for notification in event["notifications"]:
            (d,) = notification["deliveries"]
            ids[by_sub[notification["subscriber_id"]]] = d["id"]

    def obs(kind: Kind, source: Source, name: str, **kw: Any) -> Observation:
        return Observation(kind, source, ids[name], **kw)

    await asyncio.to_thread(
        record_batch,
        herald.engine,
        [
            obs(Kind.CLICKED, Source.LINK, "click", url="https://e.x/a"),
            obs(Kind.DELIVERED, Source.SENDGRID, "open"),
            obs(Kind.COMPLAINED, Source.SENDGRID, "open"),
            obs(Kind.DELIVERED, Source.SENDGRID, "unsub"),
            obs(Kind.UNSUBSCRIBED, Source.UNSUBSCRIBE, "unsub"),
            obs(Kind.BOUNCED, Source.SENDGRID, "bounce", detail=BOUNCE),
            obs(Kind.DELIVERED, Source.TWILIO, "sms_ok"),
            obs(Kind.UNDELIVERED, Source.TWILIO, "sms_bad", detail=UNDELIVERED),
        ],
    )
    r = await herald.http.post(f"/v1/deliveries/{ids['open']}/opened")  # the app's report
    assert r.status_code == 202, r.text
    details = {}
    for n, did in ids.items():
        details[n] = await herald.delivery(did)
    assert details["fail"]["status"] == "failed"
    assert details["click"]["status"] == "clicked"
    return Seeded(details)


async def get(herald: Herald, **params: Any) -> dict[str, Any]:
    r = await herald.http.get("/v1/analytics", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def counts(group: dict[str, Any]) -> dict[str, int]:
    return {c: group[c] for c in COUNTERS}


def assert_sane_latency(latency: dict[str, Any]) -> None:
    p50, p95 = latency["p50"], latency["p95"]
    assert p50 is not None and p95 is not None
    assert 0 < p50 <= p95 <= 10 * 60 * 1000  # at most ten minutes in a test run


# --- over real data ----------------------------------------------------------------


async def test_counts_rates_and_latency_per_group(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    seeded = await seed(herald, fresh_provider)

    body = await get(herald, group_by="flow")
    assert counts(body["totals"]) == TOTALS
    t = body["totals"]
    assert t["delivery_rate"] == pytest.approx(5 / 7)
    assert t["open_rate"] == pytest.approx(2 / 5)
    assert t["click_rate"] == pytest.approx(1 / 5)
    assert t["click_to_open_rate"] == pytest.approx(1 / 2)
    assert_sane_latency(t["latency_ms"])
    assert body["group_by"] == "flow"
    # Busiest first; each group's counts match what happened to its deliveries.
    assert [g["key"] for g in body["groups"]] == ["welcome", "otp", "hook"]
    flows = {g["key"]: g for g in body["groups"]}
    for key, expected in seeded.expected("flow").items():
        assert counts(flows[key]) == {c: expected[c] for c in COUNTERS}
    welcome = flows["welcome"]
    assert (welcome["delivery_rate"], welcome["open_rate"]) == (pytest.approx(3 / 4), 2 / 3)
    assert (welcome["click_rate"], welcome["click_to_open_rate"]) == (pytest.approx(1 / 3), 0.5)
    assert_sane_latency(welcome["latency_ms"])
    # Nothing opened in the SMS flow: a 0 % open rate, and no click-to-open rate at all.
    otp = flows["otp"]
    assert (otp["delivery_rate"], otp["open_rate"], otp["click_to_open_rate"]) == (0.5, 0, None)

    channels = {g["key"]: g for g in (await get(herald, group_by="channel"))["groups"]}
    assert set(channels) == {"email", "sms", "webhook"}
    assert (channels["email"]["sent"], channels["email"]["failed"]) == (4, 1)
    assert (channels["sms"]["bounced"], channels["webhook"]["delivered"]) == (1, 1)

    providers = {g["key"]: g for g in (await get(herald, group_by="provider"))["groups"]}
    assert set(providers) == {"sendgrid", "twilio", "webhook"}
    for key, expected in seeded.expected("provider").items():
        assert counts(providers[key]) == {c: expected[c] for c in COUNTERS}
    assert_sane_latency(providers["webhook"]["latency_ms"])

    # Time groups: every bucket of the window, zero-filled, in order, with since rounded down.
    hours = sorted({seeded.cohort(n) for n in CONTRIB})
    start, until = hours[0] - timedelta(hours=2), hours[-1] + timedelta(hours=2)
    n_hours = (until - start) // timedelta(hours=1)
    n_days = (until - timedelta(microseconds=1)).date().toordinal() - start.date().toordinal() + 1
    expected_keys = {
        "hour": [
            (start + timedelta(hours=i)).strftime("%Y-%m-%dT%H:00:00Z") for i in range(n_hours)
        ],
        "day": [(start.date() + timedelta(days=i)).isoformat() for i in range(n_days)],
    }
    for group_by in ("hour", "day"):
        body = await get(
            herald,
            group_by=group_by,
            since=(start + timedelta(minutes=30)).isoformat(),  # rounds down to start
            until=until.isoformat(),
        )
        assert datetime.fromisoformat(body["since"]) == start
        assert [g["key"] for g in body["groups"]] == expected_keys[group_by]
        by_time = seeded.expected(group_by)
        for g in body["groups"]:
            assert counts(g) == {c: by_time.get(g["key"], Counter())[c] for c in COUNTERS}
        assert counts(body["totals"]) == TOTALS
        empty = [g for g in body["groups"] if g["key"] not in by_time]
        assert empty or group_by == "day"  # hours before the first send are listed as zeros
        assert all(g["sent"] == 0 and g["delivery_rate"] is None for g in empty)
        assert all(g["latency_ms"] == {"p50": None, "p95": None} for g in empty)


async def test_filters_window_defaults_and_reasons(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    seeded = await seed(herald, fresh_provider)

    # Defaults: the last 7 days by day, ending now.
    body = await get(herald)
    assert body["group_by"] == "day"
    since, until = datetime.fromisoformat(body["since"]), datetime.fromisoformat(body["until"])
    assert timedelta(days=7) <= until - since < timedelta(days=7, hours=1)  # since rounds down
    assert (since.minute, since.second) == (0, 0)
    assert len(body["groups"]) in (8, 9)  # partial days at both ends
    assert counts(body["totals"]) == TOTALS

    for filters in ({"flow": "otp"}, {"channel": "email"}, {"category": "marketing"}):
        body = await get(herald, group_by="channel", **filters)
        expected = seeded.expected("channel", **filters)
        assert {g["key"]: counts(g) for g in body["groups"]} == {
            k: {c: v[c] for c in COUNTERS} for k, v in expected.items()
        }
    body = await get(herald, group_by="flow", category="transactional", channel="sms")
    assert [(g["key"], g["sent"], g["bounced"]) for g in body["groups"]] == [("otp", 2, 1)]
    assert (await get(herald, flow="no-such-flow"))["totals"]["sent"] == 0

    # The window is on the cohort hour: since rounds down, until is exclusive.
    first = min(seeded.cohort(n) for n in CONTRIB)
    last = max(seeded.cohort(n) for n in CONTRIB)
    inside = await get(
        herald,
        since=(first + timedelta(minutes=59)).isoformat(),
        until=(last + timedelta(hours=1)).isoformat(),
    )
    assert counts(inside["totals"]) == TOTALS
    before = await get(
        herald, since=(first - timedelta(days=1)).isoformat(), until=first.isoformat()
    )
    assert counts(before["totals"]) == dict.fromkeys(COUNTERS, 0)
    assert before["totals"]["delivery_rate"] is None
    assert before["totals"]["latency_ms"] == {"p50": None, "p95": None}
    after = await get(
        herald,
        since=(last + timedelta(hours=1)).isoformat(),
        until=(last + timedelta(hours=3)).isoformat(),
    )
    assert after["totals"]["sent"] == 0

    # Exact totals above, on a database shared with other tenants; no key, no numbers.
    other = await herald.http.get(
        "/v1/analytics", headers={"Authorization": "Bearer nope"}, params={"group_by": "flow"}
    )
    assert other.status_code == 401

    r = await herald.http.get("/v1/analytics/reasons", params={"limit": 10})
    assert r.status_code == 200, r.text
    reasons = r.json()["reasons"]
    by_status = {x["status"]: x for x in reasons}
    assert set(by_status) == {"bounced", "undelivered", "failed"}
    assert by_status["bounced"] == {"status": "bounced", "reason": BOUNCE, "count": 1}
    assert by_status["undelivered"] == {"status": "undelivered", "reason": UNDELIVERED, "count": 1}
    assert by_status["failed"]["count"] == 1 and by_status["failed"]["reason"]
    assert by_status["failed"]["reason"] == seeded.deliveries["fail"]["reason"]
    r = await herald.http.get("/v1/analytics/reasons", params={"limit": 1})
    assert len(r.json()["reasons"]) == 1
    r = await herald.http.get(
        "/v1/analytics/reasons", params={"until": (first - timedelta(hours=1)).isoformat()}
    )
    assert r.json()["reasons"] == []


async def test_bad_parameters_are_422_naming_the_field(herald: Herald) -> None:
    r = await herald.http.get("/v1/analytics", params={"group_by": "week"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "group_by"]
    now = datetime.now(UTC)
    for since, until in ((now, now), (now, now - timedelta(hours=1))):
        r = await herald.http.get(
            "/v1/analytics", params={"since": since.isoformat(), "until": until.isoformat()}
        )
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["query", "since"]
        r = await herald.http.get(
            "/v1/analytics/reasons", params={"since": since.isoformat(), "until": until.isoformat()}
        )
        assert r.status_code == 422
    r = await herald.http.get(
        "/v1/analytics", params={"group_by": "hour", "since": "2000-01-01T00:00:00Z"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "since"]
    r = await herald.http.get("/v1/analytics", params={"channel": "fax"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "channel"]
    assert (
        await herald.http.get("/v1/analytics", headers={"Authorization": ""})
    ).status_code == 401


# --- the pure parts ----------------------------------------------------------------


def tally(hist: dict[int, int] | None = None, **c: int) -> Tally:
    t = Tally()
    t.counts.update(c)
    for i, n in (hist or {}).items():
        t.histogram[i] = n
    return t


def test_hours_fold_into_utc_days() -> None:
    h = [
        datetime(2026, 3, 1, 23, tzinfo=UTC),
        datetime(2026, 3, 2, 0, tzinfo=UTC),
        datetime(2026, 3, 2, 13, tzinfo=UTC),
    ]
    days = fold((time_key(at, GroupBy.DAY), tally(sent=i + 1)) for i, at in enumerate(h))
    assert {k: v.counts["sent"] for k, v in days.items()} == {"2026-03-01": 1, "2026-03-02": 5}
    assert time_key(h[0], GroupBy.HOUR) == "2026-03-01T23:00:00Z"
    since, until = datetime(2026, 3, 1, 22, 30, tzinfo=UTC), datetime(2026, 3, 2, 1, tzinfo=UTC)
    assert time_buckets(since, until, GroupBy.HOUR) == [
        "2026-03-01T22:00:00Z",
        "2026-03-01T23:00:00Z",
        "2026-03-02T00:00:00Z",
    ]
    assert time_buckets(since, until, GroupBy.DAY) == ["2026-03-01", "2026-03-02"]
    assert bucket_count(since, until, GroupBy.HOUR) == 3
    assert bucket_count(since, until, GroupBy.DAY) == 2
    assert bucket_count(since, until, GroupBy.FLOW) == 0
    r = report(days, since, until, GroupBy.DAY)
    assert [(g.key, g.sent) for g in r.groups] == [("2026-03-01", 1), ("2026-03-02", 5)]
    assert r.totals.sent == 6


def test_percentiles_come_from_the_summed_histograms() -> None:
    fast, slow = latency_bucket(50), latency_bucket(5000)
    # 90 fast deliveries in one group, 10 slow in another: the median is fast, p95 slow.
    merged = fold([("email", tally({fast: 90})), ("email", tally({slow: 10}))])["email"]
    assert merged.histogram[fast] == 90 and merged.histogram[slow] == 10
    m = metrics(merged)
    lo, hi = BOUNDS_MS[fast - 1], BOUNDS_MS[fast]
    assert lo <= m["latency_ms"].p50 <= hi
    assert BOUNDS_MS[slow - 1] <= m["latency_ms"].p95 <= BOUNDS_MS[slow]
    assert percentile([0] * LATENCY_BUCKETS, 0.5) is None


def test_rates_are_null_without_a_denominator() -> None:
    m = metrics(tally(sent=4, delivered=2, opened=0, clicked=0))
    assert (m["delivery_rate"], m["open_rate"], m["click_rate"]) == (0.5, 0.0, 0.0)
    assert m["click_to_open_rate"] is None
    assert metrics(Tally())["delivery_rate"] is None
    # Groups other than time are ordered by volume, then key.
    r = report(
        {"b": tally(sent=1), "a": tally(sent=1), "c": tally(sent=3)},
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 2, tzinfo=UTC),
        GroupBy.FLOW,
    )
    assert [g.key for g in r.groups] == ["c", "a", "b"]
