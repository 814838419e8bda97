"""Where a light-load notification's milliseconds go, beside raw, and what one costs (issue 12).

Four closed-loop clients send one-email events, and raw workflows with the activity on the
workflow's queue (raw) or on one of its own (raw_split), one at a time; the three kinds take
turns in rounds. Each round also sends a few of each kind from a single client: a lone
notification's latency, which the machine's load does not blur. For each item the stages
come from the Temporal history's event times, the bench's clock around the API call and the
fake provider's arrival time, all on one machine's clock. Costs are counted from the same
histories: Temporal Cloud's billable actions, workflow tasks and history events per
notification, and CPU per process.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

from bench.raw import RawInput, RawWorkflow
from bench.run import pct, say

if TYPE_CHECKING:
    from bench.run import Bench

ITEMS = int(os.environ.get("HERALD_BENCH_TIMELINE_N", "60"))
# raw, raw_split and Herald take turns this many times, so each meets the same growing
# Temporal database and the same spells of a noisy machine (they ran one after another).
ROUNDS = int(os.environ.get("HERALD_BENCH_TIMELINE_ROUNDS", "3"))
CLIENTS = int(os.environ.get("HERALD_BENCH_TIMELINE_CLIENTS", "4"))
# Items per kind and round sent by a single client, beside the CLIENTS pass.
ALONE_PER_ROUND = 10
TOTAL = "total: sent → provider received"
LA_MARKER = "core_local_activity"

# Temporal Cloud's billable actions, by the history event that records each one.
ACTION_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "workflow start",
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "activity start",
    EventType.EVENT_TYPE_TIMER_STARTED: "timer",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signal",
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: "search-attribute upsert",
    EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED: "memo upsert",
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED: "child workflow",
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED: "signal sent",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "update",
}


@dataclass
class Item:
    workflow_id: str
    sent: float  # the client's send (POST /v1/events, or start_workflow for raw)
    answered: float | None  # the API's 202 (None for raw)
    provider: float  # the fake provider received the request


@dataclass
class Timeline:
    stages: dict[str, list[float]] = field(default_factory=dict)
    costs: list[dict[str, float]] = field(default_factory=list)

    def add(self, stage: str, seconds: float) -> None:
        self.stages.setdefault(stage, []).append(seconds * 1000)

    def extend(self, other: Timeline) -> None:
        for stage, values in other.stages.items():
            self.stages.setdefault(stage, []).extend(values)
        self.costs += other.costs

    def summary(self) -> dict[str, Any]:
        stages = {
            s: {"p50_ms": round(pct(v, 50), 1), "p95_ms": round(pct(v, 95), 1)}
            for s, v in self.stages.items()
        }
        keys = sorted({k for c in self.costs for k in c})
        per = {k: round(sum(c.get(k, 0) for c in self.costs) / len(self.costs), 2) for k in keys}
        return {"stages": stages, "cost_per_notification": per}


def _t(event: HistoryEvent) -> float:
    return event.event_time.ToMicroseconds() / 1e6


def _first(events: list[HistoryEvent], kind: int) -> HistoryEvent | None:
    return next((e for e in events if e.event_type == kind), None)


def cost(history: WorkflowHistory) -> Counter[str]:
    """Billable actions, workflow tasks and history events, counted from one history."""
    c: Counter[str] = Counter()
    events = list(history.events)
    c["history events"] = len(events)
    marker_tasks = set()
    last_task = 0
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            c["workflow tasks"] += 1
            last_task = e.event_id
        elif e.event_type in ACTION_EVENTS:
            c[f"action: {ACTION_EVENTS[EventType.ValueType(e.event_type)]}"] += 1
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            retries = e.activity_task_started_event_attributes.attempt - 1
            if retries:
                c["action: activity retry"] += retries
        elif (
            e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and e.marker_recorded_event_attributes.marker_name == LA_MARKER
        ):
            marker_tasks.add(last_task)  # local activities of one task bill as one action
    if marker_tasks:
        c["action: local activities"] = len(marker_tasks)
    c["actions"] = sum(v for k, v in c.items() if k.startswith("action: "))
    return c


def stages(tl: Timeline, item: Item, history: WorkflowHistory) -> None:
    events = list(history.events)
    started = _t(events[0])
    if item.answered is not None:
        tl.add("API accept", item.answered - item.sent)
        tl.add("accept → workflow started", started - item.answered)
    else:
        tl.add("start_workflow → workflow started", started - item.sent)
    wft = _first(events, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
    wft_done = _first(events, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    if wft is not None and wft_done is not None:
        tl.add("started → first workflow task picked up", _t(wft) - started)
        tl.add("first workflow task ran", _t(wft_done) - _t(wft))
    # The provider-calling activity: the last one started before the provider's arrival.
    sends = [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED and _t(e) <= item.provider
    ]
    if sends and wft_done is not None:
        send = sends[-1]
        sched_id = send.activity_task_started_event_attributes.scheduled_event_id
        sched = next(e for e in events if e.event_id == sched_id)
        done = next(
            (
                e
                for e in events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                and e.activity_task_completed_event_attributes.scheduled_event_id == sched_id
            ),
            None,
        )
        tl.add("first task → send activity scheduled", _t(sched) - _t(wft_done))
        tl.add("send activity scheduled → started", _t(send) - _t(sched))
        tl.add("activity started → provider received (reads, render)", item.provider - _t(send))
        if done is not None:
            tl.add("provider received → activity completed (writes)", _t(done) - item.provider)
    closed = events[-1]
    tl.add("provider received → workflow closed", _t(closed) - item.provider)
    tl.add(TOTAL, item.provider - item.sent)


async def _raw_item(bench: Bench, split: bool = False) -> Item:
    seq = next(bench.seq)
    done = bench.deliveries.wait(seq, 1)
    wf = f"raw-tl-{seq}-{uuid.uuid4().hex[:6]}"
    sent = time.time()
    await bench.client.start_workflow(
        RawWorkflow.run,
        RawInput(bench.fake.webhook_url("raw"), seq, bench.raw_split_queue if split else None),
        id=wf,
        task_queue=bench.raw_queue,
    )
    return Item(wf, sent, None, await asyncio.wait_for(done, 120))


async def _herald_item(bench: Bench, type_: str, expected: int) -> Item:
    seq = next(bench.seq)
    done = bench.deliveries.wait(seq, expected)
    sent = time.time()
    status, answer = await bench.post_event(type_, seq)
    answered = time.time()
    if status != 202:
        raise RuntimeError(f"API answered {status}: {answer}")
    wf = answer["notifications"][0]["workflow_id"]
    return Item(wf, sent, answered, await asyncio.wait_for(done, 120))


DB_COUNTERS = {
    "herald_db_statements_total": "database statements",
    "herald_db_transactions_total": "database transactions",
}


async def db_counts(bench: Bench) -> dict[str, float]:
    """Herald's database statements and transactions so far, summed over its processes."""
    c = dict.fromkeys(DB_COUNTERS.values(), 0.0)
    async with httpx.AsyncClient(timeout=10) as http:
        for url in bench.metrics.values():
            text = (await http.get(url)).text
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name in DB_COUNTERS and s.labels.get("outcome", "commit") == "commit":
                        c[DB_COUNTERS[s.name]] += s.value
    return c


async def _collect(bench: Bench, one: Any, n: int, clients: int) -> tuple[Timeline, dict]:
    items: list[Item] = []
    left = iter(range(n))
    await asyncio.sleep(1)  # what came before has settled
    db = await db_counts(bench)
    cpu = bench.cpu_snapshot()

    async def client() -> None:
        for _ in left:
            items.append(await one())

    await asyncio.gather(*(client() for _ in range(clients)))
    cpu_per = bench.cpu_per_item(cpu, n)
    await asyncio.sleep(1)  # the last workflows close after their send
    db_per = {k: (v - db[k]) / n for k, v in (await db_counts(bench)).items()}
    tl = Timeline()
    for item in items:
        history = await bench.client.get_workflow_handle(item.workflow_id).fetch_history()
        stages(tl, item, history)
        tl.costs.append({**cost(history), **db_per})
    return tl, {k: v for k, v in cpu_per.items() if v}


async def run(bench: Bench) -> None:
    await _collect(bench, lambda: _herald_item(bench, "bench.email", 1), 8, CLIENTS)  # warm-up
    per_round = max(1, ITEMS // ROUNDS)
    out: dict[str, Any] = {"items": per_round * ROUNDS, "clients": CLIENTS, "rounds": ROUNDS}
    kinds = {
        "raw": lambda: _raw_item(bench),
        # The activity on its own queue, as Herald's channels: what that hop costs raw.
        "raw_split": lambda: _raw_item(bench, split=True),
        "herald": lambda: _herald_item(bench, "bench.email", 1),
    }
    timelines = {name: Timeline() for name in kinds}
    cpu_sums: dict[str, Counter[str]] = {name: Counter() for name in kinds}
    alone = {name: Timeline() for name in kinds}
    for _ in range(ROUNDS):
        for name, one in kinds.items():
            tl, cpu = await _collect(bench, one, per_round, CLIENTS)
            timelines[name].extend(tl)
            cpu_sums[name].update(cpu)
        for name, one in kinds.items():  # one at a time: a lone password reset
            alone[name].extend((await _collect(bench, one, ALONE_PER_ROUND, 1))[0])
    out["one_client"] = {
        name: tl.summary()["stages"][TOTAL]["p50_ms"] for name, tl in alone.items()
    }
    for name, tl in timelines.items():
        cpu = {k: round(v / ROUNDS, 2) for k, v in cpu_sums[name].items()}
        out[name] = {**tl.summary(), "cpu_ms_per_item": cpu}
    # Costs (not latency) of a four-channel notification: one at a time.
    tl, cpu = await _collect(bench, lambda: _herald_item(bench, "bench.multi", 4), 10, 1)
    out["herald_4_channels"] = {
        "cost_per_notification": tl.summary()["cost_per_notification"],
        "cpu_ms_per_item": cpu,
    }
    bench.results["timeline"] = out
    for line in lines(bench.results):
        say(line)


def lines(r: dict[str, Any]) -> list[str]:
    t = r.get("timeline")
    if not t:
        return []
    names = [n for n in ("raw", "raw_split", "herald") if n in t]
    cols = [t[n]["stages"] for n in names]
    rows = [
        f"timeline: {t['items']} items each, {t['clients']} closed-loop clients, "
        f"{t.get('rounds', 1)} rounds in turn (p50 / p95 ms)"
    ]
    rows.append(f"  {'stage':<58}" + "".join(f"{n:>16}" for n in names))
    order = ["API accept", "accept → workflow started", "start_workflow → workflow started"]
    for stage in dict.fromkeys([*order, *(k for c in reversed(cols) for k in c)]):
        cells = [
            f"{s[stage]['p50_ms']:.1f} / {s[stage]['p95_ms']:.1f}" if stage in s else "—"
            for s in cols
        ]
        rows.append(f"  {stage:<58}" + "".join(f"{c:>16}" for c in cells))
    p50 = {n: t[n]["stages"][TOTAL]["p50_ms"] for n in names}
    ratio = f"light-load p50 herald ÷ raw: {p50['herald'] / p50['raw']:.2f} (target ≤ 1.5)"
    if "raw_split" in p50:
        ratio += (
            f"; raw_split ÷ raw {p50['raw_split'] / p50['raw']:.2f}, "
            f"herald ÷ raw_split {p50['herald'] / p50['raw_split']:.2f}"
        )
    rows.append(ratio)
    if alone := t.get("one_client"):
        rows.append(
            "one client at a time, sent → provider received p50: "
            + ", ".join(f"{n} {v:.1f} ms" for n, v in alone.items())
            + f" (herald ÷ raw {alone['herald'] / alone['raw']:.2f})"
        )
    for name in (n for n in ("raw", "raw_split", "herald", "herald_4_channels") if n in t):
        c = t[name]["cost_per_notification"]
        actions = ", ".join(f"{k[8:]} {v:g}" for k, v in c.items() if k.startswith("action: "))
        cpu = ", ".join(f"{k} {v}" for k, v in t[name]["cpu_ms_per_item"].items())
        rows.append(
            f"cost {name}: {c.get('actions', 0):g} actions ({actions}); "
            f"{c.get('workflow tasks', 0):g} workflow tasks; {c.get('history events', 0):g} "
            f"history events; {c.get('database statements', 0):g} database statements in "
            f"{c.get('database transactions', 0):g} transactions; CPU ms: {cpu}"
        )
    return rows
