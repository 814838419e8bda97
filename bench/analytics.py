"""The analytics query over the rollups of 1,000,000 deliveries, on PostgreSQL.

The rollups are what 1,000,000 deliveries would produce (30 days, 10 flows, 4 channels
and their providers, 3 categories), simulated one delivery at a time and aggregated
here in Python, then bulk-copied into a database of their own: sending that many
notifications through Temporal would take hours on this machine. The query itself goes
over HTTP to a second API process, the same command as the main one.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from bench.run import API_KEY, api_command, pct, say, spawn
from store.db import make_engine
from store.rollups import COUNTERS, LATENCY_COLUMNS, latency_bucket
from store.schema import migrate
from tests.fakes.net import free_port, wait_port

if TYPE_CHECKING:
    from bench.run import Bench

DELIVERIES = int(os.environ.get("HERALD_BENCH_ANALYTICS_DELIVERIES", "1000000"))
RUNS = int(os.environ.get("HERALD_BENCH_ANALYTICS_RUNS", "10"))
DAYS = 30
PG_SERVER = "postgres@127.0.0.1:5432"
PG_DB = "herald_bench"
GROUP_BYS = ("flow", "channel", "provider", "day", "hour")

FLOWS = (  # key, category, channels
    ("password-reset", "transactional", ("email",)),
    ("security-alert", "transactional", ("email", "sms", "push")),
    ("order-shipped", "transactional", ("email", "sms", "push", "webhook")),
    ("invoice-ready", "transactional", ("email", "webhook")),
    ("comment-reply", "product", ("email", "push")),
    ("mention", "product", ("push", "email")),
    ("weekly-digest", "product", ("email",)),
    ("build-failed", "product", ("webhook", "sms", "email")),
    ("promo", "marketing", ("email", "sms")),
    ("trial-ending", "marketing", ("email", "push")),
)
C = {name: i for i, name in enumerate(COUNTERS)}


def _outcome(channel: str, rng: random.Random) -> tuple[str, list[int], float | None]:
    """Provider, counters reached and accept-to-delivered ms of one simulated delivery.

    Stages follow ``core.lifecycle.REACHES``: an open or a click implies delivered.
    """
    x, y = rng.random(), rng.random()
    sent = [C["sent"]]
    if channel == "email":
        if rng.random() < 0.1:  # SMTP: no receipts, only Herald's pixel and links
            if x < 0.30:
                return (
                    "smtp",
                    [*sent, C["delivered"], C["opened"]] + ([C["clicked"]] if y < 0.2 else []),
                    rng.lognormvariate(math.log(1_200_000), 1.5),
                )
            return "smtp", sent, None
        if x < 0.02:
            return "sendgrid", [*sent, C["bounced"]], None
        if x < 0.025:
            return "sendgrid", [*sent, C["failed"]], None
        reached = [*sent, C["delivered"]]
        if x < 0.025 + 0.38:
            reached += [C["opened"]] + ([C["clicked"]] if y < 0.22 else [])
            reached += [C["unsubscribed"]] if y > 0.995 else []
        elif x > 0.9995:
            reached += [C["complained"]]
        return "sendgrid", reached, rng.lognormvariate(math.log(1800), 0.9)
    if channel == "sms":
        if x < 0.015:
            return "twilio", [*sent, C["bounced"]], None  # undelivered
        if x < 0.02:
            return "twilio", [*sent, C["failed"]], None
        extra = [C["opened"], C["clicked"]] if y < 0.04 else []  # tracked links
        return "twilio", [*sent, C["delivered"], *extra], rng.lognormvariate(math.log(2500), 0.7)
    if channel == "push":  # FCM has no receipts: only the app's open
        if x < 0.12:
            return (
                "fcm",
                [*sent, C["delivered"], C["opened"]],
                rng.lognormvariate(math.log(600_000), 1.5),
            )
        return "fcm", sent, None
    if x < 0.004:
        return "webhook", [*sent, C["failed"]], None
    return "webhook", [*sent, C["delivered"]], rng.lognormvariate(math.log(150), 0.6)


def rollup_rows(n: int, end: datetime, tenant: str) -> tuple[list[tuple[Any, ...]], list[int]]:
    """The ``delivery_rollups`` rows of ``n`` simulated deliveries over the 30 days to ``end``.

    Returns the rows and the expected totals per counter.
    """
    rng = random.Random(42)
    hours = DAYS * 24
    start = end - timedelta(hours=hours)
    # More by day than by night, less at the weekend.
    weights = [
        (1 + 0.8 * math.sin((h % 24 - 8) / 24 * 2 * math.pi))
        * (0.6 if (start + timedelta(hours=h)).weekday() >= 5 else 1.0)
        for h in range(hours)
    ]
    at = rng.choices(range(hours), weights, k=n)
    flows = rng.choices(range(len(FLOWS)), [1 / (i + 1) for i in range(len(FLOWS))], k=n)
    width = len(COUNTERS) + len(LATENCY_COLUMNS)
    cells: dict[tuple[int, int, str, str], list[int]] = {}
    for h, f in zip(at, flows, strict=True):
        channel = rng.choice(FLOWS[f][2])
        provider, reached, ms = _outcome(channel, rng)
        key = (h, f, channel, provider)
        row = cells.get(key)
        if row is None:
            row = cells[key] = [0] * width
        for i in reached:
            row[i] += 1
        if ms is not None:
            row[len(COUNTERS) + latency_bucket(ms)] += 1
    rows = [
        (tenant, start + timedelta(hours=h), FLOWS[f][0], ch, pr, FLOWS[f][1], *counts)
        for (h, f, ch, pr), counts in sorted(cells.items())
    ]
    totals = [sum(c[i] for c in cells.values()) for i in range(len(COUNTERS))]
    return rows, totals


def _load_postgres(rows: list[tuple[Any, ...]]) -> None:
    """Create ``herald_bench`` if missing, recreate Herald's tables, COPY the rollups in."""
    with psycopg.connect(f"postgresql://{PG_SERVER}/postgres", autocommit=True) as admin:
        if (
            admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,)).fetchone()
            is None
        ):
            admin.execute(f'CREATE DATABASE "{PG_DB}"')
    with psycopg.connect(f"postgresql://{PG_SERVER}/{PG_DB}", autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    engine = make_engine(f"postgresql+psycopg://{PG_SERVER}/{PG_DB}")
    migrate(engine)
    engine.dispose()
    columns = ", ".join(
        ["tenant_id", "hour", "flow_key", "channel", "provider", "category"]
        + list(COUNTERS)
        + LATENCY_COLUMNS
    )
    with psycopg.connect(f"postgresql://{PG_SERVER}/{PG_DB}") as conn:
        with conn.cursor() as cur, cur.copy(f"COPY delivery_rollups ({columns}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE delivery_rollups")


async def scenario(bench: Bench) -> None:
    """GET /v1/analytics over 30 days of rollups from 1M deliveries, on PostgreSQL."""
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    t0 = time.perf_counter()
    rows, totals = await asyncio.to_thread(rollup_rows, DELIVERIES, end, "bench")
    built = time.perf_counter() - t0
    await asyncio.to_thread(_load_postgres, rows)
    say(
        f"analytics: {DELIVERIES:,} simulated deliveries aggregated in Python into "
        f"{len(rows):,} rollup rows ({built:.1f} s) and copied into PostgreSQL {PG_DB}; "
        "they were not sent through Temporal (that would take hours on 2 cores)"
    )
    port = free_port()
    env = {**bench.env, "HERALD_DATABASE_URL": f"postgresql+psycopg://{PG_SERVER}/{PG_DB}"}
    # The same command as the main API, on its own port and database.
    proc = bench.procs["api-pg"] = spawn("api-pg", api_command(port), env, bench.work)
    expected = dict(zip(COUNTERS, totals, strict=True))
    out: dict[str, Any] = {
        "deliveries": DELIVERIES,
        "rollup_rows": len(rows),
        "days": DAYS,
        "runs": RUNS,
        "simulated": "rollups aggregated in Python and bulk-copied, not sent through Temporal",
    }
    mismatches = 0
    try:
        await wait_port(port, alive=proc.alive, name="api-pg")
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60,
        ) as client:
            params = {
                "since": (end - timedelta(days=DAYS)).isoformat(),
                "until": end.isoformat(),
            }
            for group_by in GROUP_BYS:
                times, body = [], None
                for i in range(RUNS + 1):  # the first one warms up
                    t = time.perf_counter()
                    r = await client.get("/v1/analytics", params={**params, "group_by": group_by})
                    if i:
                        times.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                    body = r.json()
                assert body is not None
                got = {k: body["totals"][k] for k in COUNTERS}
                summed = sum(g["sent"] for g in body["groups"])
                ok = got == expected and summed == DELIVERIES
                mismatches += not ok
                out[group_by] = {
                    "p50_ms": round(pct(times, 50), 1),
                    "max_ms": round(max(times), 1),
                    "groups": len(body["groups"]),
                    "response_kb": round(len(r.content) / 1024, 1),
                    "totals_match": ok,
                }
                say(f"analytics {group_by}: p50 {pct(times, 50):.0f} ms, max {max(times):.0f} ms")
    except Exception:
        say(f"--- api-pg log tail ---\n{proc.log_path.read_text(errors='replace')[-2000:]}")
        raise
    finally:
        proc.stop()
        del bench.procs["api-pg"]  # gone: no CPU to read any more
    out["sent_total"] = expected["sent"]
    out["mismatches"] = mismatches
    out["slowest_p50_ms"] = max(out[g]["p50_ms"] for g in GROUP_BYS)
    out["slowest_max_ms"] = max(out[g]["max_ms"] for g in GROUP_BYS)
    bench.results["analytics"] = out


def lines(r: dict[str, Any]) -> list[str]:
    """The printed lines for this scenario (its targets are in ``bench.run.TARGETS``)."""
    out: list[str] = []
    if a := r.get("analytics"):
        out.append(
            f"analytics over {a['deliveries']:,} deliveries ({a['rollup_rows']:,} rollup rows, "
            "simulated in Python, not sent through Temporal), PostgreSQL, "
            f"{a['runs']} runs each:"
        )
        for g in GROUP_BYS:
            x = a[g]
            out.append(
                f"  group_by={g:<8} p50 {x['p50_ms']:>6} ms  max {x['max_ms']:>6} ms  "
                f"{x['groups']} groups, {x['response_kb']} KB, totals match {x['totals_match']}"
            )
    return out
