"""Ingestion: events published to RabbitMQ, consumed by ``python -m ingest``.

10,000 events (``HERALD_BENCH_INGEST_N``) are published with publisher confirms to
``<prefix>.events``, each for the bench's email flow. Measured: how fast the consumer puts
them into the event store (committed rows, polled), how fast they are delivered end to
end (the fake SendGrid's arrivals), and the consumer's CPU and peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import aio_pika
from sqlalchemy import create_engine, func, select
from sqlmodel import col

from bench.run import say, spawn
from store.models import Event

if TYPE_CHECKING:
    from bench.run import Bench

N = int(os.environ.get("HERALD_BENCH_INGEST_N", "10000"))
RABBITMQ_URL = os.environ.get("HERALD_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
TENANT = "bench"  # the bench's API key's tenant
TIMEOUT = float(os.environ.get("HERALD_BENCH_INGEST_TIMEOUT", "900"))
# bench.email (the email flow); a type with no flow measures the accept path alone.
EVENT_TYPE = os.environ.get("HERALD_BENCH_INGEST_TYPE", "bench.email")
# The consumer's HERALD_BROKER_PREFETCH; unset keeps Herald's default.
PREFETCH = os.environ.get("HERALD_BENCH_INGEST_PREFETCH", "")


async def run(bench: Bench) -> None:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    env = {
        **bench.env,
        "HERALD_BROKER_URL": RABBITMQ_URL,
        "HERALD_BROKER_TENANTS": TENANT,
        "HERALD_BROKER_PREFIX": prefix,
        **({"HERALD_BROKER_PREFETCH": PREFETCH} if PREFETCH else {}),
    }
    proc = spawn("ingest", [sys.executable, "-m", "ingest"], env, bench.work)
    bench.procs["ingest"] = proc
    deadline = time.monotonic() + 60
    while "consuming events for" not in proc.log_path.read_text(errors="replace"):
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the consumer did not start: see {proc.log_path}")
        await asyncio.sleep(0.1)
    engine = create_engine(bench.env["HERALD_DATABASE_URL"])
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        bench.results["ingest"] = await _measure(bench, engine, connection, prefix)
    finally:
        channel = await connection.channel()
        for name in (
            f"{prefix}.ingest.{TENANT}",
            f"{prefix}.events.dead",
            f"{prefix}.events.unrouted",
        ):
            await channel.queue_delete(name)
        for name in (f"{prefix}.events", f"{prefix}.events.unrouted", f"{prefix}.status"):
            await channel.exchange_delete(name)
        await connection.close()
        engine.dispose()
        # Stopped here: its status stream would otherwise take CPU from later scenarios.
        bench.procs.pop("ingest").stop()


def _stored(engine: Any, run: str) -> int:
    stmt = select(func.count()).where(col(Event.idempotency_key).like(f"{run}-%"))
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


async def _measure(bench: Bench, engine: Any, connection: Any, prefix: str) -> dict[str, Any]:
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(f"{prefix}.events")
    run = uuid.uuid4().hex[:8]
    seqs = [next(bench.seq) for _ in range(N)]
    delivered = [bench.deliveries.wait(seq, 1) for seq in seqs]
    cpu = bench.cpu_snapshot()
    t0 = time.time()
    for lo in range(0, N, 500):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        json.dumps(
                            {"type": EVENT_TYPE, "to": ["bench-user"], "data": {"seq": seq}}
                        ).encode(),
                        message_id=f"{run}-{seq}",
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=f"{TENANT}.{EVENT_TYPE}",
                )
                for seq in seqs[lo : lo + 500]
            )
        )
    published = time.time() - t0
    while (stored := await asyncio.to_thread(_stored, engine, run)) < N:
        if time.time() - t0 > TIMEOUT:
            raise RuntimeError(f"ingest: {stored:,} of {N:,} stored after {TIMEOUT:.0f} s")
        await asyncio.sleep(0.2)
    accepted = time.time() - t0
    accept_cpu = bench.cpu_per_item(cpu, N)
    say(f"ingest: {N:,} published in {published:.1f} s, stored in {accepted:.1f} s")
    if EVENT_TYPE != "bench.email":
        for fut in delivered:
            fut.cancel()
        return {
            "events": N,
            "event_type": EVENT_TYPE,
            "accept_per_s": round(N / accepted, 1),
            "cpu_ms_per_event_until_stored": {k: v for k, v in accept_cpu.items() if v},
        }
    times = await asyncio.wait_for(asyncio.gather(*delivered), TIMEOUT)
    end_to_end = max(times) - t0
    out = {
        "events": N,
        "publish_seconds": round(published, 2),
        "accept_seconds": round(accepted, 2),
        "accept_per_s": round(N / accepted, 1),
        "end_to_end_seconds": round(end_to_end, 2),
        "end_to_end_per_s": round(N / end_to_end, 1),
        "cpu_ms_per_event_until_stored": {k: v for k, v in accept_cpu.items() if v},
        "consumer_peak_rss_mb": round(bench.procs["ingest"].peak_rss_mb(), 1),
    }
    say(
        f"ingest: accepted {out['accept_per_s']:,}/s, delivered end to end "
        f"{out['end_to_end_per_s']:,}/s, consumer RSS {out['consumer_peak_rss_mb']} MB"
    )
    return out


def lines(r: dict[str, Any]) -> list[str]:
    i = r.get("ingest")
    if not i or "end_to_end_seconds" not in i:
        return []
    cpu = ", ".join(f"{k} {v}" for k, v in i["cpu_ms_per_event_until_stored"].items())
    return [
        f"ingest {i['events']:,} events via RabbitMQ: published in {i['publish_seconds']} s, "
        f"stored in {i['accept_seconds']} s ({i['accept_per_s']}/s), delivered in "
        f"{i['end_to_end_seconds']} s ({i['end_to_end_per_s']}/s); consumer peak RSS "
        f"{i['consumer_peak_rss_mb']} MB",
        f"  CPU ms per event until stored: {cpu}",
    ]
