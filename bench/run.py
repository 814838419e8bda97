"""Run every scenario against real processes on loopback and report ratios against raw.

Processes: a file-backed Temporal dev server (configured like ``make run``),
Herald's worker, Herald's API, a raw-ceiling worker; the fake provider runs in
this process so each delivery can be awaited the moment it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.raw import RawInput, RawWorkflow
from core.temporal import connect_when_ready
from scripts.run import temporal_command
from store.db import make_engine
from store.schema import migrate
from tests.fakes.net import free_port, wait_port
from tests.fakes.provider import FakeProvider, Recorded

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
API_KEY = "bench-key"
SEQ = re.compile(r"bench (\d+)")

RAW_CONCURRENCY = (8, 16, 32, 64)
ITEMS_PER_LEVEL = int(os.environ.get("HERALD_BENCH_ITEMS", "300"))
# raw, raw_split and transactional take turns this many times at raw's best concurrency,
# ITEMS_PER_LEVEL items each in all, so each meets the same Temporal database and the same
# spells of a noisy machine (one after another, raw fell from 38.5 to 26.6/s within a run).
ROUNDS = int(os.environ.get("HERALD_BENCH_ROUNDS", "3"))
BURST_EVENTS = int(os.environ.get("HERALD_BENCH_BURST", "2000"))
# How many POSTs the burst keeps in flight: a client with a connection pool of this size.
BURST_CONCURRENCY = int(os.environ.get("HERALD_BENCH_BURST_CONCURRENCY", "16"))
# Herald's database: SQLite (the embedded default) unless this names a PostgreSQL server,
# e.g. postgres@127.0.0.1:5432 (trust auth); a fresh database is made there and dropped.
BENCH_POSTGRES = os.environ.get("HERALD_BENCH_POSTGRES", "")
# Niceness of Temporal and the workers: on one shared host the API then gets the CPU first,
# as it would on cores of its own. 0 (the default) shares the CPU evenly.
BACKGROUND_NICE = int(os.environ.get("HERALD_BENCH_BACKGROUND_NICE", "0"))
# Herald's worker processes: 1 serves every queue (as `make run`); 2 puts the workflows queue
# and the channel queues in processes of their own (as docker-compose.yml).
WORKERS = int(os.environ.get("HERALD_BENCH_WORKERS", "1"))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def peak_rss_mb(self) -> float:
        """VmHWM is the kernel's own high-water mark of resident memory."""
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        kb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        return kb / 1024

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time so far, children included (utime, stime, cutime, cstime)."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


def spawn(
    name: str, cmd: list[str], env: dict[str, str], logs: Path, background: bool = False
) -> Proc:
    """``background``: delivery work (Temporal, workers), niced by ``BACKGROUND_NICE``."""
    log_path = logs / f"{name}.log"
    out = log_path.open("wb")
    niceness = BACKGROUND_NICE if background else 0
    popen = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
    )
    return Proc(name, popen, log_path)


def api_command(port: int) -> list[str]:
    """Herald's API under uvicorn on ``port``; the environment names its database."""
    args = "-m uvicorn --factory api.main:create_app --host 127.0.0.1 --no-access-log"
    return [sys.executable, *args.split(), "--port", str(port), "--log-level", "warning"]


def worker_commands(processes: int = WORKERS) -> dict[str, list[str]]:
    """Herald's worker processes by name: one for every queue, or workflows and channels apart."""
    from workflows.runtime import ALL_QUEUES

    worker = [sys.executable, "worker.py"]
    if processes == 1:
        return {"worker": worker}
    channels = ",".join(q for q in ALL_QUEUES if q != "workflows")
    return {
        "worker": [*worker, "--queues", "workflows"],
        "worker-channels": [*worker, "--queues", channels],
    }


class Deliveries:
    """Resolves a future per (scenario, seq) once every expected provider request arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.expect: dict[int, int] = {}
        self.seen: dict[int, list[float]] = defaultdict(list)
        self.waiters: dict[int, asyncio.Future[float]] = {}

    def on_record(self, rec: Recorded) -> None:  # server thread
        if rec.status >= 300:
            return
        seq = _seq_of(rec)
        if seq is not None:
            self.loop.call_soon_threadsafe(self._arrived, seq, rec.received_at)

    def _arrived(self, seq: int, at: float) -> None:
        self.seen[seq].append(at)
        fut = self.waiters.get(seq)
        if fut is not None and not fut.done() and len(self.seen[seq]) >= self.expect.get(seq, 1):
            fut.set_result(max(self.seen[seq]))

    def wait(self, seq: int, expected: int) -> asyncio.Future[float]:
        self.expect[seq] = expected
        fut = self.loop.create_future()
        self.waiters[seq] = fut
        if len(self.seen[seq]) >= expected:
            fut.set_result(max(self.seen[seq]))
        return fut


def _seq_of(rec: Recorded) -> int | None:
    j = rec.json if isinstance(rec.json, dict) else {}
    text = ""
    if rec.kind == "sendgrid":
        text = str(j.get("subject", ""))
    elif rec.kind == "twilio":
        text = rec.form.get("Body", "")
    elif rec.kind == "fcm":
        text = str(j.get("message", {}).get("notification", {}).get("title", ""))
    elif rec.kind == "webhook":
        return int(j["seq"]) if "seq" in j else None
    m = SEQ.search(text)
    return int(m.group(1)) if m else None


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    api_latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    items: int = 0

    @property
    def throughput(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, float]:
        out = {
            "items": self.items,
            "throughput_per_s": round(self.throughput, 2),
            "latency_p50_ms": round(pct(self.latencies, 50) * 1000, 1),
            "latency_p95_ms": round(pct(self.latencies, 95) * 1000, 1),
            "latency_p99_ms": round(pct(self.latencies, 99) * 1000, 1),
        }
        if self.api_latencies:
            out["api_p50_ms"] = round(pct(self.api_latencies, 50) * 1000, 1)
            out["api_p99_ms"] = round(pct(self.api_latencies, 99) * 1000, 1)
        return out


async def closed_loop(concurrency: int, items: int, one: Any) -> Run:
    """``concurrency`` users, each submitting the next item once its previous one arrived."""
    run = Run(items=items)
    counter = itertools.count()

    async def user() -> None:
        while next(counter) < items:
            await one(run)

    start = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - start
    return run


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: dict[str, Proc] = {}
        self.seq = itertools.count(1)
        self.fake = FakeProvider()
        self.results: dict[str, Any] = {}

    async def start(self) -> None:
        self.fake.start()
        self.deliveries = Deliveries(asyncio.get_running_loop())
        self.fake.on_record = self.deliveries.on_record
        tport, uiport, aport = free_port(), free_port(), free_port()
        self.temporal_addr = f"127.0.0.1:{tport}"
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        base_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base_env.get('PATH', '')}"
        self.procs["temporal"] = spawn(
            "temporal",
            temporal_command(tport, uiport, self.work / "temporal.db", headless=True),
            base_env,
            self.work,
            background=True,
        )
        await wait_port(tport, alive=self.procs["temporal"].alive, name="temporal")
        self.client = await connect_when_ready(self.temporal_addr)
        overrides = self.fake.settings_overrides(self.work)
        env = {
            **base_env,
            "HERALD_ENV": "test",
            # As production runs it (HERALD_ENV=test would keep the workflow sandbox on).
            "HERALD_WORKFLOW_SANDBOX": "false",
            "HERALD_DATABASE_URL": self._database_url(),
            "HERALD_TEMPORAL_ADDRESS": self.temporal_addr,
            "HERALD_API_KEYS": f"{API_KEY}:bench",
            "HERALD_PUBLIC_URL": f"http://127.0.0.1:{aport}",  # tracking links, callbacks
            "HERALD_BROADCAST_BATCH_SIZE": "1000",  # bench.broadcast: SendGrid's request size
            # The fake receiver is on loopback, which the webhook SSRF guard refuses by default.
            "HERALD_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
            # One tenant: the per-tenant fairness bound would only throttle it (64 = all slots).
            "HERALD_WEBHOOK_TENANT_CONCURRENCY": "64",
            **{f"HERALD_{k.upper()}": str(v) for k, v in overrides.items()},
        }
        migrate(make_engine(env["HERALD_DATABASE_URL"]))  # as `herald migrate` does
        self.raw_queue = f"bench-raw-{uuid.uuid4().hex[:6]}"
        self.raw_split_queue = f"{self.raw_queue}-activities"
        self.procs["raw-worker"] = spawn(
            "raw-worker",
            [
                sys.executable,
                "-m",
                "bench.raw_worker",
                "--address",
                self.temporal_addr,
                "--task-queue",
                self.raw_queue,
            ],
            base_env,
            self.work,
            background=True,
        )
        self.metrics = {"api": f"http://127.0.0.1:{aport}/metrics"}
        for name, cmd in worker_commands().items():
            mport = free_port()
            self.metrics[name] = f"http://127.0.0.1:{mport}/metrics"
            self.procs[name] = spawn(
                name, cmd, {**env, "HERALD_WORKER_METRICS_PORT": str(mport)}, self.work, True
            )
        self.env = env
        self.procs["api"] = spawn("api", api_command(aport), env, self.work)
        await wait_port(aport, alive=self.procs["api"].alive, name="api")
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{aport}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
        )
        # Events are posted with aiohttp, the rest with httpx: the load generator shares the
        # 2 cores with the API, and httpx cost 2.6 ms of CPU per POST here against
        # aiohttp's 0.35 (more than the API's own accept), so it held the burst back.
        self.web = aiohttp.ClientSession(
            f"http://127.0.0.1:{aport}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            # Idle connections are dropped well before uvicorn's 5 s keep-alive ends: a POST
            # on one the server had just closed failed with ServerDisconnectedError.
            connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=2),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        await self._setup_flows()

    async def post_event(self, type_: str, seq: int) -> tuple[int, Any]:
        """POST one event: the status and the answer's JSON (its text if it is not JSON)."""
        body = {"type": type_, "to": ["bench-user"], "data": {"seq": seq}}
        async with self.web.post("/v1/events", json=body) as r:
            text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    async def _setup_flows(self) -> None:
        sub = {
            "email": "bench@example.com",
            "phone": "+14155550100",
            "push_tokens": ["bench-device"],
            "webhook_url": self.fake.webhook_url("herald"),
        }
        for path, body in [
            ("/v1/subscribers/bench-user", sub),
            (
                "/v1/flows/bench-email",
                {
                    "event_type": "bench.email",
                    "steps": [{"channel": "email", "subject": "bench {{ data.seq }}", "text": "x"}],
                },
            ),
            (
                "/v1/flows/bench-multi",
                {
                    "event_type": "bench.multi",
                    "steps": [
                        {"channel": "email", "subject": "bench {{ data.seq }}", "text": "x"},
                        {"channel": "sms", "text": "bench {{ data.seq }}"},
                        {"channel": "push", "title": "bench {{ data.seq }}", "body": "x"},
                        {"channel": "webhook", "payload": {"seq": "{{ data.seq }}"}},
                    ],
                },
            ),
        ]:
            r = await self.http.put(path, json=body)
            r.raise_for_status()

    # --- one item of each kind ---------------------------------------------------

    async def raw_one(self, run: Run, split: bool = False) -> None:
        seq = next(self.seq)
        done = self.deliveries.wait(seq, 1)
        t0 = time.time()
        await self.client.start_workflow(
            RawWorkflow.run,
            RawInput(
                self.fake.webhook_url("raw"),
                seq,
                self.raw_split_queue if split else None,
            ),
            id=f"raw-{seq}-{uuid.uuid4().hex[:6]}",
            task_queue=self.raw_queue,
        )
        run.latencies.append(await asyncio.wait_for(done, 120) - t0)

    async def _event_one(self, run: Run, type_: str, expected: int) -> None:
        seq = next(self.seq)
        done = self.deliveries.wait(seq, expected)
        t0 = time.time()
        status, answer = await self.post_event(type_, seq)
        run.api_latencies.append(time.time() - t0)
        if status != 202:
            raise RuntimeError(f"API answered {status}: {answer}")
        run.latencies.append(await asyncio.wait_for(done, 120) - t0)

    async def raw_split_one(self, run: Run) -> None:
        await self.raw_one(run, split=True)

    async def tx_one(self, run: Run) -> None:
        await self._event_one(run, "bench.email", 1)

    async def multi_one(self, run: Run) -> None:
        await self._event_one(run, "bench.multi", 4)

    # --- scenarios -----------------------------------------------------------------

    async def scenario_raw(self) -> int:
        await closed_loop(8, 40, self.raw_one)  # warm-up
        levels = {}
        cpu_by_level = {}
        for c in RAW_CONCURRENCY:
            cpu = self.cpu_snapshot()
            levels[c] = await closed_loop(c, ITEMS_PER_LEVEL, self.raw_one)
            cpu_by_level[c] = self.cpu_per_item(cpu, ITEMS_PER_LEVEL)
            say(
                f"raw c={c}: {levels[c].throughput:.1f}/s p50 "
                f"{pct(levels[c].latencies, 50) * 1000:.0f} ms"
            )
        best = max(levels, key=lambda c: levels[c].throughput)
        self.results["raw"] = {
            "best_concurrency": best,
            **levels[best].summary(),
            "cpu_ms_per_item": cpu_by_level[best],
            "by_concurrency": {c: r.summary() for c, r in levels.items()},
        }
        return best

    def cpu_snapshot(self) -> dict[str, float]:
        snap = {name: p.cpu_seconds() for name, p in self.procs.items()}
        snap["bench"] = time.process_time()
        return snap

    def cpu_per_item(self, before: dict[str, float], items: int) -> dict[str, float]:
        after = self.cpu_snapshot()
        return {k: round((after[k] - before[k]) / items * 1000, 2) for k in before}

    async def scenario(self, name: str, one: Any, concurrency: int) -> None:
        await closed_loop(4, 20, one)  # warm-up
        cpu = self.cpu_snapshot()
        run = await closed_loop(concurrency, ITEMS_PER_LEVEL, one)
        self.results[name] = {
            "concurrency": concurrency,
            **run.summary(),
            "cpu_ms_per_item": self.cpu_per_item(cpu, run.items),
        }
        say(f"{name} c={concurrency}: {run.throughput:.1f}/s")

    async def scenario_turns(self, concurrency: int) -> None:
        """raw (as ``raw_turns``), raw_split and transactional, in turns over ``ROUNDS``."""
        kinds = {
            "raw_turns": self.raw_one,
            "raw_split": self.raw_split_one,
            "transactional": self.tx_one,
        }
        for one in kinds.values():
            await closed_loop(4, 20, one)  # warm-up
        per_round = max(1, ITEMS_PER_LEVEL // ROUNDS)
        runs = {name: Run() for name in kinds}
        cpu: dict[str, dict[str, float]] = {name: defaultdict(float) for name in kinds}
        for _ in range(ROUNDS):
            for name, one in kinds.items():
                before = self.cpu_snapshot()
                part = await closed_loop(concurrency, per_round, one)
                for k, v in self.cpu_per_item(before, per_round).items():
                    cpu[name][k] += v / ROUNDS
                total = runs[name]
                total.items += part.items
                total.seconds += part.seconds
                total.latencies += part.latencies
                total.api_latencies += part.api_latencies
        for name, run in runs.items():
            self.results[name] = {
                "concurrency": concurrency,
                "rounds": ROUNDS,
                **run.summary(),
                "cpu_ms_per_item": {k: round(v, 2) for k, v in cpu[name].items()},
            }
            say(f"{name} c={concurrency} ({ROUNDS} rounds in turn): {run.throughput:.1f}/s")

    async def _post_burst(self, seqs: list[int]) -> tuple[list[float], int, float]:
        """POST every event, BURST_CONCURRENCY in flight: accept times, refusals, seconds."""
        accept: list[float] = []
        sem = asyncio.Semaphore(BURST_CONCURRENCY)
        failures = 0

        async def post(seq: int) -> None:
            nonlocal failures
            async with sem:
                t0 = time.perf_counter()
                status, _ = await self.post_event("bench.email", seq)
                accept.append(time.perf_counter() - t0)
                failures += status != 202

        start = time.time()
        await asyncio.gather(*(post(s) for s in seqs))
        return accept, failures, time.time() - start

    async def scenario_burst(
        self, name: str = "burst", paused: bool = False, own_core: bool = False
    ) -> None:
        """The burst; ``paused`` stops Temporal (SIGSTOP) while it is posted, so no workflow
        runs and the API has the machine: its own accept latency, without the contention.
        ``own_core`` pins the API to core 0 and every other process (this one too) to the
        rest, as if it had a machine of its own: it still starts the workflows, Temporal
        runs them, but their CPU is not taken from the API's core."""
        seqs = [next(self.seq) for _ in range(BURST_EVENTS)]
        futures = [self.deliveries.wait(s, 1) for s in seqs]
        temporal = self.procs["temporal"].popen.pid
        if paused:
            await asyncio.sleep(1)  # the worker finishes what it holds (SQLite's write lock)
            os.kill(temporal, signal.SIGSTOP)
        if own_core:
            self._pin(api={0})
        start = time.time()
        try:
            accept, failures, posted = await self._post_burst(seqs)
        finally:
            if paused:
                os.kill(temporal, signal.SIGCONT)
            if own_core:
                self._pin(api=None)
        await asyncio.wait_for(asyncio.gather(*futures), 600)
        delivered = sorted(f.result() - start for f in futures)
        last = delivered[-1]
        await asyncio.sleep(3)  # let any duplicate arrive before counting
        counts = [len(self.deliveries.seen[s]) for s in seqs]
        self.results[name] = {
            "events": BURST_EVENTS,
            "poster_concurrency": BURST_CONCURRENCY,
            "temporal_paused": paused,
            "api_own_core": own_core,
            "rejected": failures,
            "api_accept_p50_ms": round(pct(accept, 50) * 1000, 1),
            "api_accept_p99_ms": round(pct(accept, 99) * 1000, 1),
            "all_posted_s": round(posted, 2),
            # Holding starts during a burst (dispatching/give_way.py) moves the first two.
            "first_delivered_s": round(delivered[0], 2),
            "half_delivered_s": round(pct(delivered, 50), 2),
            "last_delivered_s": round(last, 2),
            "lost": sum(1 for c in counts if c == 0),
            "duplicates": sum(c - 1 for c in counts if c > 1),
        }
        say(f"{name}: last delivered after {last:.1f}s")

    async def scenario_bursts(self) -> None:
        await self.scenario_burst()
        await self.scenario_burst("burst_temporal_paused", paused=True)
        if (os.cpu_count() or 1) > 1:
            await self.scenario_burst("burst_api_own_core", own_core=True)

    def _pin(self, api: set[int] | None) -> None:
        """The API's threads on ``api``, every other process's on the other cores; None
        gives every process every core again."""
        every = set(range(os.cpu_count() or 1))
        pids = {name: proc.popen.pid for name, proc in self.procs.items()}
        pids["bench"] = os.getpid()
        for name, pid in pids.items():
            cpus = every if api is None else api if name == "api" else every - api
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):  # a thread that has just ended
                    os.sched_setaffinity(int(task.name), cpus)

    def memory(self) -> None:
        self.results["memory"] = {
            "worker_peak_rss_mb": max(
                round(self.procs[name].peak_rss_mb(), 1) for name in worker_commands()
            ),
            "api_peak_rss_mb": round(self.procs["api"].peak_rss_mb(), 1),
        }

    def _database_url(self) -> str:
        """SQLite in the work directory (the embedded default), or a fresh PostgreSQL database."""
        if not BENCH_POSTGRES:
            return f"sqlite:///{self.work / 'herald.db'}"
        import psycopg

        self.pg_db = f"herald_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(f"postgresql://{BENCH_POSTGRES}/postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.pg_db}"')
        return f"postgresql+psycopg://{BENCH_POSTGRES}/{self.pg_db}"

    async def stop(self) -> None:
        if hasattr(self, "http"):
            await self.http.aclose()
        if hasattr(self, "web"):
            await self.web.close()
        # Every process (a scenario may add workers), the server they talk to last.
        for name in sorted(self.procs, key=lambda n: n == "temporal"):
            self.procs[name].stop()
        self.fake.stop()
        if hasattr(self, "pg_db"):
            import psycopg

            with psycopg.connect(f"postgresql://{BENCH_POSTGRES}/postgres", autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')


def ratios(r: dict[str, Any]) -> dict[str, Any]:
    """Transactional and raw_split against raw in the same turns; multichannel, which runs
    alone, against the mean of the raw runs before and after it, at the same concurrency."""
    raw_rate = r["raw_turns"]["throughput_per_s"]
    raw_p50 = r["raw_turns"]["latency_p50_ms"]
    around = (r["raw"]["throughput_per_s"] + r["raw_after"]["throughput_per_s"]) / 2
    tx, split = r["transactional"], r["raw_split"]
    return {
        "raw_throughput_per_s": round(raw_rate, 2),
        "raw_p50_ms": round(raw_p50, 1),
        "raw_before_and_after_per_s": round(around, 2),
        "transactional_throughput_vs_raw": round(tx["throughput_per_s"] / raw_rate, 2),
        "transactional_p50_vs_raw": round(tx["latency_p50_ms"] / raw_p50, 2),
        "multichannel_throughput_vs_raw": round(r["multichannel"]["throughput_per_s"] / around, 2),
        # As runs before 2026-12-06 computed it (they ran raw_split and transactional alone).
        "transactional_throughput_vs_raw_before_and_after": round(
            tx["throughput_per_s"] / around, 2
        ),
        "raw_split_throughput_vs_raw": round(split["throughput_per_s"] / raw_rate, 2),
        "transactional_throughput_vs_raw_split": round(
            tx["throughput_per_s"] / split["throughput_per_s"], 2
        ),
        "transactional_p50_vs_raw_split": round(tx["latency_p50_ms"] / split["latency_p50_ms"], 2),
    }


TARGETS = [
    (
        "transactional throughput ÷ raw",
        lambda r: r["ratios"]["transactional_throughput_vs_raw"],
        ">=",
        0.8,
    ),
    ("transactional p50 ÷ raw p50", lambda r: r["ratios"]["transactional_p50_vs_raw"], "<=", 1.5),
    ("burst API accept p99 (ms)", lambda r: r["burst"]["api_accept_p99_ms"], "<=", 50),
    (
        "burst p99, API on own core (ms)",
        lambda r: r["burst_api_own_core"]["api_accept_p99_ms"],
        "<=",
        50,
    ),
    ("burst lost + duplicates", lambda r: _burst_lost(r), "<=", 0),
    ("worker peak RSS (MB)", lambda r: r["memory"]["worker_peak_rss_mb"], "<=", 300),
    ("tracking pixel p99 (ms)", lambda r: r["tracking"]["pixel"]["p99_ms"], "<=", 20),
    ("tracking click p99 (ms)", lambda r: r["tracking"]["click"]["p99_ms"], "<=", 20),
    ("tracking errors", lambda r: r["tracking"]["errors"], "<=", 0),
    ("SendGrid 1,000 events, max (ms)", lambda r: r["sendgrid_batch"]["max_ms"], "<=", 1000),
    ("SendGrid events not stored", lambda r: r["sendgrid_batch"]["not_stored"], "<=", 0),
    ("analytics 1M, slowest p50 (ms)", lambda r: r["analytics"]["slowest_p50_ms"], "<=", 200),
    ("analytics 1M, slowest max (ms)", lambda r: r["analytics"]["slowest_max_ms"], "<=", 200),
    ("analytics totals mismatches", lambda r: r["analytics"]["mismatches"], "<=", 0),
    ("ingest accepted/s (RabbitMQ)", lambda r: r["ingest"]["accept_per_s"], ">=", 500),
    ("broadcast import (s)", lambda r: r["broadcast"]["import"]["seconds"], "<=", 30),
    (
        "broadcast recipients/s, 1 process",
        lambda r: r["broadcast"]["one_process"]["recipients_per_s"],
        ">=",
        2000,
    ),
    (
        "broadcast recipients/s, as compose",
        lambda r: r["broadcast"]["fast"]["recipients_per_s"],
        ">=",
        2000,
    ),
    ("broadcast worker peak RSS (MB)", lambda r: r["broadcast"]["worker_peak_rss_mb"], "<=", 300),
    ("broadcast missed (all runs)", lambda r: _broadcast_missed(r), "<=", 0),
]


BURSTS = ("burst", "burst_temporal_paused", "burst_api_own_core")


def _burst_lost(r: dict[str, Any]) -> int:
    runs = [r[n] for n in BURSTS if n in r]
    if not runs:
        raise KeyError("burst")  # left out by HERALD_BENCH_ONLY: the table skips the row
    return int(sum(b["lost"] + b["duplicates"] for b in runs))


def _broadcast_missed(r: dict[str, Any]) -> int:
    b = r["broadcast"]
    runs = ("one_process", "fast", "crash", "delay")  # those that ran
    return int(sum(b[run]["missed"] for run in runs if run in b))


def table(r: dict[str, Any]) -> str:
    lines = [f"{'figure':<34} {'value':>10} {'target':>10}  met"]
    for name, get, op, target in TARGETS:
        try:
            value = get(r)
        except KeyError:  # left out by HERALD_BENCH_ONLY
            continue
        met = value >= target if op == ">=" else value <= target
        lines.append(f"{name:<34} {value:>10} {op + str(target):>10}  {'yes' if met else 'NO'}")
    lines.append("")
    from bench import broadcast, engagement, ingest, timeline  # import this module

    for name in BURSTS:
        if name in r:
            b = r[name]
            lines.append(
                f"{name} {b['events']}: accept p50 {b['api_accept_p50_ms']} ms, p99 "
                f"{b['api_accept_p99_ms']} ms; posted in {b['all_posted_s']} s; delivered: first "
                f"at {b['first_delivered_s']} s, half at {b['half_delivered_s']} s, last at "
                f"{b['last_delivered_s']} s; lost {b['lost']}, duplicates {b['duplicates']}"
            )
    if "raw" not in r:
        return "\n".join(
            lines + engagement.lines(r) + timeline.lines(r) + ingest.lines(r) + broadcast.lines(r)
        )
    for scen in ("raw", "raw_turns", "raw_split", "transactional", "multichannel", "raw_after"):
        s = r[scen]
        lines.append(
            f"{scen:<14} {s['throughput_per_s']:>7}/s  p50 {s['latency_p50_ms']:>7} ms  "
            f"p95 {s['latency_p95_ms']:>7} ms  p99 {s['latency_p99_ms']:>7} ms"
            + (
                f"  API p50 {s['api_p50_ms']} ms p99 {s['api_p99_ms']} ms"
                if "api_p50_ms" in s
                else ""
            )
        )
    q = r["ratios"]
    lines.append(
        f"in turns with raw at {q['raw_throughput_per_s']}/s; against the mean of raw before "
        f"and after every scenario ({q['raw_before_and_after_per_s']}/s), transactional is "
        f"{q['transactional_throughput_vs_raw_before_and_after']}"
    )
    lines.append(
        f"raw split (activity on its own task queue, as Herald's channels): "
        f"{q['raw_split_throughput_vs_raw']} of raw; transactional is "
        f"{q['transactional_throughput_vs_raw_split']} of it in throughput, "
        f"{q['transactional_p50_vs_raw_split']}x its p50"
    )
    lines.append("")
    lines.append(
        "CPU ms per item: "
        + "; ".join(
            f"{scen}: " + ", ".join(f"{k} {v}" for k, v in r[scen]["cpu_ms_per_item"].items() if v)
            for scen in ("raw", "raw_turns", "raw_split", "transactional", "multichannel")
        )
    )
    m = r["memory"]
    lines.append(f"peak RSS: worker {m['worker_peak_rss_mb']} MB, API {m['api_peak_rss_mb']} MB")
    return "\n".join(
        [
            *lines,
            "",
            *engagement.lines(r),
            *timeline.lines(r),
            *ingest.lines(r),
            *broadcast.lines(r),
        ]
    )


def say(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


async def _main() -> int:
    from bench import broadcast, engagement, ingest, timeline  # import this module

    # HERALD_BENCH_ONLY picks parts, comma-separated: core (raw, transactional, burst), burst
    # (alone), timeline, engagement (or some of tracking,sendgrid,analytics), ingest, broadcast.
    only = os.environ.get("HERALD_BENCH_ONLY", "")
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            await bench.start()
            parts = set(only.split(",")) if only else set()
            if not parts or "core" in parts:
                best = await bench.scenario_raw()
                # In turns, so no scenario gets a fresher Temporal database than another.
                await bench.scenario_turns(best)
                await bench.scenario("multichannel", bench.multi_one, best)
                await bench.scenario("raw_after", bench.raw_one, best)
                await bench.scenario_bursts()
                bench.memory()
            elif "burst" in parts:  # the burst alone
                await bench.scenario_bursts()
                bench.memory()
            if not parts or "timeline" in parts:
                await timeline.run(bench)
            if not parts or parts & {"engagement", *engagement.SCENARIOS}:
                some = parts & set(engagement.SCENARIOS)
                await engagement.run(bench, "" if "engagement" in parts else ",".join(some))
            if not parts or "ingest" in parts:
                await ingest.run(bench)
            if not parts or "broadcast" in parts:
                await broadcast.run(bench)
        except Exception:
            for proc in bench.procs.values():
                tail = proc.log_path.read_text(errors="replace")[-2000:]
                say(f"--- {proc.name} log tail ---\n{tail}")
            raise
        finally:
            await bench.stop()
    r = bench.results
    if "raw" in r:
        r["ratios"] = ratios(r)
    r["machine"] = {
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
    }
    r["items_per_level"] = ITEMS_PER_LEVEL
    r["herald_database"] = "postgresql" if BENCH_POSTGRES else "sqlite"
    r["background_nice"] = BACKGROUND_NICE
    r["worker_processes"] = WORKERS
    r["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.write_text(json.dumps(r, indent=2, default=str))
    say(table(r))
    say(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """Turn SIGTERM into SystemExit so ``finally`` stops the child processes."""
    raise SystemExit(128 + signum)


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return asyncio.run(_main())
