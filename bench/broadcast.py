"""Campaigns: a bulk import, a broadcast through the fast path, one with a worker SIGKILL'd
mid-run, and the per-recipient path (a flow with a delay).

Everything goes through the running Herald over HTTP. The fake SendGrid counts what it got
per personalization (one request carries up to 1,000): each run's subject carries its own
tag, so runs over the same topic are told apart, and every email is checked off.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from temporalio.api.enums.v1 import EventType

from bench.run import WORKERS, say, spawn, worker_commands

if TYPE_CHECKING:
    from bench.run import Bench
    from tests.fakes.provider import Recorded

N = int(os.environ.get("HERALD_BENCH_BROADCAST_N", "100000"))
DELAY_N = int(os.environ.get("HERALD_BENCH_BROADCAST_DELAY_N", "2000"))
# Share of the recipients received before the worker is killed in the crash run.
CRASH_AT = float(os.environ.get("HERALD_BENCH_BROADCAST_CRASH_AT", "0.3"))
BATCH_SIZE = 1000  # HERALD_BROADCAST_BATCH_SIZE of the bench's API and worker
PER_CALL = 10_000
TOPIC, DELAY_TOPIC = "bench-bcast", "bench-bcast-delay"
TAG = re.compile(r"bcast (\w+)")
TIMEOUT = float(os.environ.get("HERALD_BENCH_BROADCAST_TIMEOUT", "900"))
# After a run with one worker process for every queue (as `make run` starts it), the rest
# run with the workflows queue and the channel queues in processes of their own, as
# docker-compose.yml deploys them. HERALD_BENCH_BROADCAST_SPLIT=0 keeps one.
SPLIT = os.environ.get("HERALD_BENCH_BROADCAST_SPLIT", "1") != "0"


def email_of(i: int) -> str:
    return f"r{i:06d}@bcast.example"


class Inbox:
    """Per run tag, how many times each address got its mail, and when the last one came."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.got: dict[str, Counter[str]] = {}
        self.last: dict[str, float] = {}
        self.requests: Counter[str] = Counter()
        self.watch: list[tuple[str, int, asyncio.Event]] = []

    def expect(self, tag: str, distinct: int) -> asyncio.Event:
        event = asyncio.Event()
        with self.lock:
            if len(self.got.setdefault(tag, Counter())) >= distinct:
                event.set()
            else:
                self.watch.append((tag, distinct, event))
        return event

    def distinct(self, tag: str) -> int:
        with self.lock:
            return len(self.got.get(tag, ()))

    def on_record(self, rec: Recorded) -> None:  # server thread
        if rec.kind != "sendgrid" or rec.status >= 300 or not isinstance(rec.json, dict):
            return
        mail = rec.json
        with self.lock:
            tags = set()
            for p in mail.get("personalizations", []):
                m = TAG.search(str(p.get("subject") or mail.get("subject", "")))
                if m is None:
                    continue
                tag = m.group(1)
                tags.add(tag)
                counts = self.got.setdefault(tag, Counter())
                for to in p.get("to", []):
                    counts[to["email"]] += 1
                self.last[tag] = rec.received_at
            self.requests.update(tags)
            fired = [w for w in self.watch if len(self.got.get(w[0], ())) >= w[1]]
            self.watch = [w for w in self.watch if w not in fired]
        for _, _, event in fired:
            self.loop.call_soon_threadsafe(event.set)

    def tally(self, tag: str, n: int) -> dict[str, int]:
        with self.lock:
            counts = self.got.get(tag, Counter())
            return {
                "received": sum(counts.values()),
                "missed": sum(1 for i in range(n) if counts[email_of(i)] == 0),
                "duplicates": sum(c - 1 for c in counts.values() if c > 1),
                "requests": self.requests[tag],
            }


async def run(bench: Bench) -> None:
    inbox = Inbox(asyncio.get_running_loop())
    previous = bench.fake.on_record

    def both(rec: Recorded) -> None:
        if previous is not None:
            previous(rec)
        inbox.on_record(rec)

    bench.fake.on_record = both
    out: dict[str, Any] = {"recipients": N, "batch_size": BATCH_SIZE}
    bench.results["broadcast"] = out
    await _setup(bench)
    out["import"] = await _import(bench)
    out["split"] = SPLIT
    if SPLIT and WORKERS == 1:  # HERALD_BENCH_WORKERS=2 started them apart already
        out["one_process"] = await _broadcast(bench, inbox, "one", TOPIC, "bench-bcast", N)
        out["one_process_rss_mb"] = _rss(bench)
        bench.fake.reset()  # the fake keeps every body; drop them between runs
        bench.procs.pop("worker").stop()
        await _start_workers(bench, "-split")
    out["fast"] = await _broadcast(bench, inbox, "fast", TOPIC, "bench-bcast", N)
    out["worker_rss_mb"] = _rss(bench)
    out["worker_peak_rss_mb"] = max(out["worker_rss_mb"].values())
    bench.fake.reset()
    if CRASH_AT > 0:  # HERALD_BENCH_BROADCAST_CRASH_AT=0 leaves the crash run out
        out["crash"] = await _broadcast(bench, inbox, "crash", TOPIC, "bench-bcast", N, crash=True)
        out["worker_after_crash_peak_rss_mb"] = max(_rss(bench).values())
    bench.fake.reset()
    delay_flow = "bench-bcast-delay"
    out["delay"] = await _broadcast(bench, inbox, "delay", DELAY_TOPIC, delay_flow, DELAY_N)
    bench.fake.reset()


def _workers(bench: Bench) -> list[str]:
    return [name for name in bench.procs if name.startswith("worker")]


def _rss(bench: Bench) -> dict[str, float]:
    return {name: round(bench.procs[name].peak_rss_mb(), 1) for name in _workers(bench)}


async def _start_workers(bench: Bench, generation: str) -> None:
    """The worker processes, started and serving: workflows and channels apart when SPLIT."""
    cmds = worker_commands(2 if SPLIT else 1)
    for name, cmd in cmds.items():
        bench.procs[name] = spawn(name + generation, cmd, bench.env, bench.work)
    deadline = time.monotonic() + 60
    for name in cmds:
        proc = bench.procs[name]
        while "serving" not in proc.log_path.read_text(errors="replace"):
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not start: see {proc.log_path}")
            await asyncio.sleep(0.1)


async def _setup(bench: Bench) -> None:
    html = '<html><body><p>Hello</p><a href="https://example.com/sale">sale</a></body></html>'
    email = {"channel": "email", "subject": "bcast {{ data.run }}", "text": "x", "html": html}
    for path, body in [
        ("/v1/flows/bench-bcast", {"event_type": "bench.bcast", "steps": [email]}),
        (
            "/v1/flows/bench-bcast-delay",
            {
                "event_type": "bench.bcast.delay",
                "steps": [{"type": "delay", "duration": "PT1S"}, email],
            },
        ),
        (f"/v1/topics/{TOPIC}", {"name": "Bench broadcast"}),
        (f"/v1/topics/{DELAY_TOPIC}", {"name": "Bench broadcast with a delay"}),
    ]:
        (await bench.http.put(path, json=body)).raise_for_status()


async def _import(bench: Bench) -> dict[str, Any]:
    """``N`` subscribers in calls of 10,000, then into the topics (timed apart)."""
    ids = [f"bcast-{i:06d}" for i in range(N)]
    calls = []
    start = time.perf_counter()
    for lo in range(0, N, PER_CALL):
        rows = [
            {"id": ids[i], "email": email_of(i), "name": f"Recipient {i}", "locale": "en"}
            for i in range(lo, min(N, lo + PER_CALL))
        ]
        t0 = time.perf_counter()
        r = await bench.http.post("/v1/subscribers/bulk", json={"subscribers": rows})
        r.raise_for_status()
        body = r.json()
        if body["invalid"] or len(body["created"]) + len(body["updated"]) != len(rows):
            raise RuntimeError(f"bulk import answered {str(body)[:300]}")
        calls.append(time.perf_counter() - t0)
    imported = time.perf_counter() - start
    start = time.perf_counter()
    for lo in range(0, N, PER_CALL):
        r = await bench.http.post(
            f"/v1/topics/{TOPIC}/subscribers", json={"subscribers": ids[lo : lo + PER_CALL]}
        )
        r.raise_for_status()
    topic = time.perf_counter() - start
    r = await bench.http.post(
        f"/v1/topics/{DELAY_TOPIC}/subscribers", json={"subscribers": ids[:DELAY_N]}
    )
    r.raise_for_status()
    say(f"broadcast import: {N:,} subscribers in {imported:.1f} s, topic in {topic:.1f} s")
    return {
        "seconds": round(imported, 2),
        "call_max_s": round(max(calls), 2),
        "topic_seconds": round(topic, 2),
    }


async def _broadcast(
    bench: Bench, inbox: Inbox, tag: str, topic: str, flow: str, n: int, crash: bool = False
) -> dict[str, Any]:
    """POST the broadcast, await every address, then the broadcast's own counts."""
    done = inbox.expect(tag, n)
    cpu = bench.cpu_snapshot()
    t0 = time.time()
    r = await bench.http.post(
        "/v1/broadcasts", json={"flow": flow, "audience": {"topic": topic}, "data": {"run": tag}}
    )
    accept = time.time() - t0
    if r.status_code != 202:
        raise RuntimeError(f"POST /v1/broadcasts answered {r.status_code}: {r.text}")
    broadcast_id = r.json()["id"]
    out: dict[str, Any] = {"n": n, "api_accept_ms": round(accept * 1000, 1)}
    if crash:
        out.update(await _kill_worker(bench, inbox, tag, int(n * CRASH_AT), t0))
    try:
        await asyncio.wait_for(done.wait(), TIMEOUT)
    except TimeoutError:
        say(f"broadcast {tag}: {inbox.distinct(tag):,} of {n:,} after {TIMEOUT:.0f} s")
        raise
    seconds = inbox.last[tag] - t0
    await _finished(bench, broadcast_id)
    await asyncio.sleep(3)  # a late duplicate (or record) would land now
    status = await _finished(bench, broadcast_id)
    # A killed worker's CPU is gone with it: no per-recipient CPU for the crash run.
    cpu_ms = {} if crash else bench.cpu_per_item(cpu, n)
    out.update(
        {
            "seconds": round(seconds, 2),
            "recipients_per_s": round(n / seconds, 1),
            **inbox.tally(tag, n),
            "status": status["status"],
            "counts": status["counts"],
            "cpu_ms_per_recipient": {k: v for k, v in cpu_ms.items() if v},
            "activities": await _phases(bench, status["workflow_id"]),
        }
    )
    say(
        f"broadcast {tag}: {n:,} in {seconds:.1f} s = {n / seconds:,.0f}/s, missed "
        f"{out['missed']}, duplicates {out['duplicates']}"
    )
    return out


async def _kill_worker(
    bench: Bench, inbox: Inbox, tag: str, after: int, t0: float
) -> dict[str, Any]:
    """SIGKILL every worker process once ``after`` addresses got their mail; start new ones."""
    await asyncio.wait_for(inbox.expect(tag, after).wait(), TIMEOUT)
    for name in _workers(bench):
        old = bench.procs.pop(name)
        os.killpg(old.popen.pid, signal.SIGKILL)
        old.popen.wait(10)
    killed_at = time.time()
    at = inbox.distinct(tag)
    await asyncio.sleep(0.5)  # requests the dead worker had on the wire land now
    settled = inbox.distinct(tag)
    await _start_workers(bench, "-2")
    say(f"broadcast {tag}: worker SIGKILL'd at {at:,} received ({killed_at - t0:.1f} s)")
    return {"killed_after_s": round(killed_at - t0, 2), "received_at_kill": settled}


async def _finished(bench: Bench, broadcast_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        r = await bench.http.get(f"/v1/broadcasts/{broadcast_id}")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        if body["status"] in ("completed", "cancelled") or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.5)


async def _phases(bench: Bench, workflow_id: str) -> dict[str, dict[str, float]]:
    """From the broadcast's histories (every continue-as-new run): per activity type, how
    many ran, seconds queued (scheduled -> started) and seconds running (started -> closed).
    """
    scheduled: dict[int, tuple[str, float]] = {}
    started: dict[int, float] = {}
    out: dict[str, dict[str, float]] = {}
    done = (EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED, EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
    async for execution in bench.client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        handle = bench.client.get_workflow_handle(workflow_id, run_id=execution.run_id)
        history = await handle.fetch_history()
        scheduled.clear()
        started.clear()
        for e in history.events:
            at = e.event_time.ToDatetime().timestamp()
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                name = e.activity_task_scheduled_event_attributes.activity_type.name
                scheduled[e.event_id] = (name, at)
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started[e.activity_task_started_event_attributes.scheduled_event_id] = at
            elif e.event_type in done:
                attrs = (
                    e.activity_task_completed_event_attributes
                    if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                    else e.activity_task_failed_event_attributes
                )
                name, t_sched = scheduled[attrs.scheduled_event_id]
                t_start = started.get(attrs.scheduled_event_id, t_sched)
                row = out.setdefault(name, {"count": 0, "queued_s": 0.0, "running_s": 0.0})
                row["count"] += 1
                row["queued_s"] += t_start - t_sched
                row["running_s"] += at - t_start
    return {
        k: {
            "count": v["count"],
            "queued_s": round(v["queued_s"], 2),
            "running_s": round(v["running_s"], 2),
        }
        for k, v in out.items()
    }


def lines(r: dict[str, Any]) -> list[str]:
    b = r.get("broadcast")
    if not b or "delay" not in b:
        return []
    i = b["import"]
    out = [
        f"broadcast import {b['recipients']:,}: {i['seconds']} s (slowest call of 10,000 "
        f"{i['call_max_s']} s); into the topic {i['topic_seconds']} s"
    ]
    for name in ("one_process", "fast", "crash", "delay"):
        if name not in b:
            continue
        s = b[name]
        out.append(
            f"broadcast {name:<5} {s['n']:>7,}: {s['seconds']} s, {s['recipients_per_s']}/s, "
            f"missed {s['missed']}, duplicates {s['duplicates']}, {s['requests']} SendGrid "
            f"requests, status {s['status']}, sent {s['counts']['sent']}"
        )
        if cpu := s["cpu_ms_per_recipient"]:
            out.append("  CPU ms per recipient: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
        if "killed_after_s" in s:
            out.append(
                f"  worker killed at {s['killed_after_s']} s with {s['received_at_kill']:,} "
                "received; a new one started"
            )
        out.append(
            "  activities (count, s queued, s running): "
            + "; ".join(
                f"{k} {v['count']}, {v['queued_s']}, {v['running_s']}"
                for k, v in s["activities"].items()
            )
        )
    if b.get("split"):
        out.append(
            "broadcast one_process: one worker process for every queue (as `make run` starts "
            f"it), peak RSS {b['one_process_rss_mb']}; the runs after it: workflows and channels "
            f"in processes of their own (as docker-compose.yml), peak RSS {b['worker_rss_mb']} MB"
        )
    after = b.get("worker_after_crash_peak_rss_mb")
    out.append(
        f"broadcast worker peak RSS {b['worker_peak_rss_mb']} MB"
        + ("" if after is None else f" (restarted workers {after} MB)")
    )
    return out
