"""After the send: tracking endpoints, a SendGrid event batch, analytics (``bench.analytics``).

Everything goes through the running Herald over HTTP. Tracked URLs are the ones the worker
wrote into real emails (read back from the fake SendGrid); event batches echo the custom
args of mails the fake received and carry the fake's real ECDSA signature.
"""

from __future__ import annotations

import asyncio
import html
import os
import random
import re
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import aiohttp
import httpx

from bench import analytics
from bench.run import SEQ, pct, say
from tests.fakes.callbacks import sendgrid_events_for, sign_sendgrid_events

if TYPE_CHECKING:
    from bench.run import Bench
    from tests.fakes.provider import Recorded

TRACK_RATE = int(os.environ.get("HERALD_BENCH_TRACK_RATE", "200"))
TRACK_SECONDS = float(os.environ.get("HERALD_BENCH_TRACK_SECONDS", "10"))
TRACK_DELIVERIES = int(os.environ.get("HERALD_BENCH_TRACK_DELIVERIES", "40"))
SG_EVENTS = 1000
SG_BATCHES = int(os.environ.get("HERALD_BENCH_SG_BATCHES", "3"))
SG_DELIVERIES = 250  # per batch: 4 events for most, 2 for a bounce, second opens to fill
LINKS = ("https://example.com/pricing", "https://example.com/docs", "https://example.org/blog")
URL_ATTR = re.compile(r'(?:href|src)="([^"]+)"')
WOKEN = re.compile(r"opened (\d+)")
Target = tuple[str, str, str | None]  # pixel or click, URL, the Location a click must answer
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=60)


class Hit(NamedTuple):
    kind: str
    seconds: float  # from issue to the whole answer
    ok: bool  # the status (and Location) expected; a failed request counts as not ok
    issued: float
    lag: float  # behind the schedule


async def run(bench: Bench, only: str = "") -> None:
    """``only``: "" or "engagement" for all three, else some of tracking,sendgrid,analytics."""
    names = set(only.split(",")) if only not in ("", "engagement") else set(SCENARIOS)
    await _setup(bench)
    for name, scenario in SCENARIOS.items():
        if name in names:
            await scenario(bench)


async def _setup(bench: Bench) -> None:
    anchors = "".join(
        f'<p><a href="{u}?seq={{{{ data.seq }}}}">link {i}</a></p>' for i, u in enumerate(LINKS)
    )
    for path, body in [
        ("/v1/subscribers/bench-sg", {"email": "sg-bench@example.com"}),
        (
            "/v1/flows/bench-track",
            {
                "event_type": "bench.track",
                "steps": [
                    {
                        "channel": "email",
                        "subject": "bench {{ data.seq }}",
                        "text": "x",
                        "html": f"<html><body><h1>Hello</h1>{anchors}</body></html>",
                    },
                    {"type": "wait", "duration": "PT1H", "until": "opened"},
                    {"channel": "sms", "text": "opened {{ data.seq }}"},
                ],
            },
        ),
        (
            "/v1/flows/bench-sg",
            {
                "event_type": "bench.sg",
                "steps": [{"channel": "email", "subject": "bench {{ data.seq }}", "text": "x"}],
            },
        ),
    ]:
        (await bench.http.put(path, json=body)).raise_for_status()


async def _send(bench: Bench, type_: str, to: str, n: int) -> dict[int, Recorded]:
    """``n`` events through the API, each awaited until the fake SendGrid has its mail."""
    seqs = [next(bench.seq) for _ in range(n)]
    sem = asyncio.Semaphore(16)

    async def one(seq: int) -> None:
        async with sem:
            done = bench.deliveries.wait(seq, 1)
            r = await bench.http.post(
                "/v1/events", json={"type": type_, "to": [to], "data": {"seq": seq}}
            )
            if r.status_code != 202:
                raise RuntimeError(f"API answered {r.status_code}: {r.text}")
            await asyncio.wait_for(done, 300)

    await asyncio.gather(*(one(s) for s in seqs))
    wanted = set(seqs)
    mails = {}
    for rec in bench.fake.requests("sendgrid"):
        m = SEQ.search(str(rec.json.get("subject", ""))) if isinstance(rec.json, dict) else None
        if m and int(m.group(1)) in wanted and rec.status < 300:
            mails[int(m.group(1))] = rec
    return mails


def _html_of(rec: Recorded) -> str:
    return next(c["value"] for c in rec.json["content"] if c["type"] == "text/html")


def _delivery_id(rec: Recorded) -> str:
    return str(rec.json["custom_args"]["herald_delivery_id"])


# --- tracking endpoints --------------------------------------------------------------


async def scenario_tracking(bench: Bench) -> None:
    """Open-loop load on the pixel and click links of real emails, while workflows wake up.

    The flow waits for the open before sending an SMS, so the first open of each email
    signals a workflow (after the response) and Temporal and the worker work during the
    load; the SMS arriving shows each signal got through. The same load runs again once
    every email is opened and clicked: no status moves, no signal, only the recording.
    """
    mails = await _send(bench, "bench.track", "bench-user", TRACK_DELIVERIES + 1)
    targets: list[list[Target]] = []
    for seq, rec in sorted(mails.items()):
        urls = [html.unescape(u) for u in URL_ATTR.findall(_html_of(rec))]
        clicks = [u for u in urls if "/t/c/" in u]
        pixels = [u for u in urls if "/t/o/" in u]
        if len(pixels) != 1 or len(clicks) != len(LINKS):
            raise RuntimeError(f"mail {seq} is not tracked as expected: {urls}")
        targets.append(
            [("pixel", pixels[0], None)]
            + [("click", c, f"{u}?seq={seq}") for c, u in zip(clicks, LINKS, strict=True)]
        )
    warm, measured = targets[0], targets[1:]
    rng = random.Random(9)
    n = int(TRACK_RATE * TRACK_SECONDS)
    # Half pixels, half clicks, spread over every measured mail.
    load = [
        rng.choice(measured)[0 if i % 2 == 0 else rng.randrange(1, len(LINKS) + 1)]
        for i in range(n)
    ]
    await _open_loop([warm[i % len(warm)] for i in range(100)], TRACK_RATE)
    cpu = bench.cpu_snapshot()
    hits = await _open_loop(load, TRACK_RATE)
    cpu_ms = bench.cpu_per_item(cpu, n)
    woken = await _woken(bench, set(sorted(mails)[1:]), within=60)
    # The same load again: every stage already reached, so no status moves, no signal.
    repeat = await _open_loop(load, TRACK_RATE)
    statuses = await asyncio.gather(
        *(bench.http.get(f"/v1/deliveries/{_delivery_id(mails[s])}") for s in sorted(mails)[1:])
    )
    issued = [h.issued for h in hits]
    out: dict[str, Any] = {
        "rate_per_s": TRACK_RATE,
        "requests": n,
        "achieved_per_s": round((n - 1) / (max(issued) - min(issued)), 1),
        "issue_lag_p99_ms": round(pct([h.lag for h in hits], 99) * 1000, 1),
        "issue_lag_max_ms": round(max(h.lag for h in hits) * 1000, 1),
        "errors": sum(1 for h in hits + repeat if not h.ok),
        "emails": len(measured),
        "workflows_woken": woken,
        "emails_clicked": sum(r.json().get("status") == "clicked" for r in statuses),
        "cpu_ms_per_request": cpu_ms,
        # Where the slow answers fall: the first opens and clicks of each email come early.
        "p99_ms_by_second": _by_second(hits),
        **_stats(hits),
        "repeat": {**_stats(repeat), "p99_ms_by_second": _by_second(repeat)},
    }
    bench.results["tracking"] = out
    say(
        f"tracking {n} at {TRACK_RATE}/s: pixel p99 {out['pixel']['p99_ms']} ms, "
        f"click p99 {out['click']['p99_ms']} ms, {woken} workflows woken; repeated: pixel p99 "
        f"{out['repeat']['pixel']['p99_ms']} ms, click p99 {out['repeat']['click']['p99_ms']} ms"
    )


def _stats(hits: list[Hit]) -> dict[str, dict[str, Any]]:
    out = {}
    for kind in ("pixel", "click"):
        lat = [h.seconds for h in hits if h.kind == kind]
        out[kind] = {
            "requests": len(lat),
            "errors": sum(1 for h in hits if h.kind == kind and not h.ok),
            "p50_ms": round(pct(lat, 50) * 1000, 1),
            "p95_ms": round(pct(lat, 95) * 1000, 1),
            "p99_ms": round(pct(lat, 99) * 1000, 1),
            "max_ms": round(max(lat) * 1000, 1),
        }
    return out


def _by_second(hits: list[Hit]) -> list[float]:
    start = min(h.issued for h in hits)
    seconds: dict[int, list[float]] = {}
    for h in hits:
        seconds.setdefault(int(h.issued - start), []).append(h.seconds)
    return [round(pct(seconds[k], 99) * 1000, 1) for k in sorted(seconds)]


async def _open_loop(load: list[Target], rate: float) -> list[Hit]:
    """Each request issued at its due time, whatever the earlier ones are doing.

    aiohttp rather than httpx: the load generator shares the 2 cores with the API, and
    httpx's pool cost several ms of CPU per request here once requests queued up.
    """
    out: list[Hit] = []

    async def hit(session: aiohttp.ClientSession, target: Target, due: float) -> None:
        kind, url, location = target
        t0 = time.perf_counter()
        try:
            async with session.get(url, allow_redirects=False) as r:
                await r.read()
                ok = (
                    r.status == 200 and r.headers.get("content-type") == "image/gif"
                    if kind == "pixel"
                    else r.status == 302 and r.headers.get("location") == location
                )
        except aiohttp.ClientError:
            ok = False
        out.append(Hit(kind, time.perf_counter() - t0, ok, t0, t0 - due))

    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:
        start = time.perf_counter() + 0.05
        tasks = []
        for i, target in enumerate(load):
            due = start + i / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(hit(session, target, due)))
        await asyncio.gather(*tasks)
    return out


async def _woken(bench: Bench, seqs: set[int], within: float) -> int:
    """How many of the mails' workflows sent their SMS after the open ended their wait."""
    deadline = time.monotonic() + within
    while True:
        found = {
            int(m.group(1))
            for rec in bench.fake.requests("twilio")
            if (m := WOKEN.search(rec.form.get("Body", "")))
        } & seqs
        if len(found) == len(seqs) or time.monotonic() > deadline:
            return len(found)
        await asyncio.sleep(0.5)


# --- SendGrid event batch ---------------------------------------------------------------


def _batch(mails: list[Recorded]) -> list[dict[str, Any]]:
    """1,000 events over real mails: delivered/open/click for most, a bounce for one in ten."""
    events: list[dict[str, Any]] = []
    for i, rec in enumerate(mails):
        if i % 10 == 9:
            events += sendgrid_events_for(rec, "processed", "bounce")
        else:
            click = {"event": "click", "url": LINKS[i % len(LINKS)]}
            events += sendgrid_events_for(rec, "processed", "delivered", "open", click)
    for rec in (m for i, m in enumerate(mails) if i % 10 != 9):
        if len(events) >= SG_EVENTS:
            break
        events += sendgrid_events_for(rec, {"event": "open", "sg_machine_open": True})
    if len(events) != SG_EVENTS:
        raise RuntimeError(f"built {len(events)} events, not {SG_EVENTS}")
    return events


async def scenario_sendgrid(bench: Bench) -> None:
    """Signed 1,000-event batches, each over its own 250 mails, then one replayed as is."""
    mails = await _send(bench, "bench.sg", "bench-sg", SG_BATCHES * SG_DELIVERIES)
    ordered = [mails[s] for s in sorted(mails)]
    url = f"{bench.http.base_url}/v1/providers/sendgrid/events"
    times, answers = [], []
    batches = [
        _batch(ordered[b * SG_DELIVERIES : (b + 1) * SG_DELIVERIES]) for b in range(SG_BATCHES)
    ]
    async with httpx.AsyncClient(timeout=60) as client:  # no API key, as SendGrid
        for events in [*batches, batches[0]]:  # the last one replays the first
            body, headers = sign_sendgrid_events(events)
            t0 = time.perf_counter()
            r = await client.post(url, content=body, headers=headers)
            times.append(time.perf_counter() - t0)
            r.raise_for_status()
            answers.append(r.json())
    fresh, replay = answers[:-1], answers[-1]
    sample = ordered[0], ordered[9]  # a clicked mail and a bounced one
    got = [
        (await bench.http.get(f"/v1/deliveries/{_delivery_id(m)}")).json()["status"] for m in sample
    ]
    ms = [t * 1000 for t in times[:-1]]
    bench.results["sendgrid_batch"] = {
        "events_per_batch": SG_EVENTS,
        "batches": SG_BATCHES,
        "p50_ms": round(pct(ms, 50), 1),
        "max_ms": round(max(ms), 1),
        "times_ms": [round(t, 1) for t in ms],
        "stored": sum(a["stored"] for a in fresh),
        "not_stored": sum(a["received"] - a["stored"] for a in fresh),
        "replay_ms": round(times[-1] * 1000, 1),
        "replay_duplicates": replay["duplicates"],
        "sample_statuses": got,
    }
    if got != ["clicked", "bounced"]:
        raise RuntimeError(f"the batch did not move the deliveries as expected: {got}")
    say(f"sendgrid batches of {SG_EVENTS}: {[round(t) for t in ms]} ms, replay {times[-1]:.2f} s")


SCENARIOS = {
    "tracking": scenario_tracking,
    "sendgrid": scenario_sendgrid,
    "analytics": analytics.scenario,
}


# --- report -------------------------------------------------------------------------------


def lines(r: dict[str, Any]) -> list[str]:
    """The printed lines for these scenarios (the targets are in the main table)."""
    out = []
    if t := r.get("tracking"):
        for kind, k in [*t.items(), *(("repeated " + k, v) for k, v in t["repeat"].items())]:
            if kind.endswith(("pixel", "click")):
                out.append(
                    f"tracking {kind:<14} {k['requests']:>5} req  p50 {k['p50_ms']} ms  "
                    f"p95 {k['p95_ms']} ms  p99 {k['p99_ms']} ms  max {k['max_ms']} ms  "
                    f"errors {k['errors']}"
                )
        out.append(
            f"tracking load: {t['achieved_per_s']}/s of {t['rate_per_s']}/s asked, issue lag "
            f"p99 {t['issue_lag_p99_ms']} ms; {t['workflows_woken']}/{t['emails']} workflows "
            f"woken by the open, {t['emails_clicked']} emails clicked; CPU ms per request: "
            + ", ".join(f"{k} {v}" for k, v in t["cpu_ms_per_request"].items() if v)
        )
        out.append(f"tracking p99 by second (ms): {t['p99_ms_by_second']}")
        out.append(f"repeated, p99 by second (ms): {t['repeat']['p99_ms_by_second']}")
    if s := r.get("sendgrid_batch"):
        out.append(
            f"SendGrid {s['batches']} x {s['events_per_batch']} events: p50 {s['p50_ms']} ms, "
            f"max {s['max_ms']} ms, {s['stored']} stored; replay {s['replay_ms']} ms "
            f"({s['replay_duplicates']} duplicates)"
        )
    return out + analytics.lines(r)
