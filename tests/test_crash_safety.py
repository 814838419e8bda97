"""Crash safety with real processes: SIGKILL the worker mid-run, lose nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from core.temporal import connect_when_ready
from scripts.run import temporal_command
from tests.conftest import make_settings, open_api, unique
from tests.fakes.net import free_port, wait_port
from tests.fakes.provider import FakeProvider

REPO = Path(__file__).resolve().parent.parent
EVENTS = 300
IN_FLIGHT = 16  # per queue in the worker: the most a kill can leave unreported


class Cluster:
    def __init__(self, tmp: Path, database_url: str, provider: FakeProvider) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.prefix = unique("crash")
        self.worker_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HERALD_")},
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "HERALD_ENV": "test",
            "HERALD_DATABASE_URL": database_url,
            "HERALD_TEMPORAL_ADDRESS": self.address,
            "HERALD_TASK_QUEUE_PREFIX": self.prefix,
            "HERALD_SENDGRID_API_KEY": "SG.test",
            "HERALD_SENDGRID_BASE_URL": provider.url,
            "HERALD_WORKER_MAX_CONCURRENT_ACTIVITIES": str(IN_FLIGHT),
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_temporal(self) -> subprocess.Popen[bytes]:
        cmd = temporal_command(self.port, free_port(), self.tmp / "temporal.db", headless=True)
        return self._spawn(cmd, {**self.worker_env})

    def start_worker(self) -> subprocess.Popen[bytes]:
        return self._spawn([sys.executable, "worker.py"], self.worker_env)

    def _spawn(self, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"proc-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
async def cluster(
    tmp_path: Path, database_url: str, engine: Engine, fresh_provider: FakeProvider
) -> AsyncIterator[tuple[Cluster, httpx.AsyncClient]]:
    c = Cluster(tmp_path, database_url, fresh_provider)
    try:
        c.start_temporal()
        await wait_port(c.port)
        client = await connect_when_ready(c.address)
        settings, key, _ = make_settings(
            database_url,
            temporal_address=c.address,
            task_queue_prefix=c.prefix,
            sendgrid_api_key="SG.test",
            sendgrid_base_url=fresh_provider.url,
            # An attempt on the killed worker is retried after this, not the default 30 s.
            retry_email={"start_to_close": 3, "initial_interval": 0.2},
            # Starts cut off by the restart are re-dispatched by the sweep.
            dispatch_sweep_seconds=1,
            # Many batches, so a kill lands in the middle of a broadcast.
            broadcast_batch_size=20,
            # One batch sent at a time, so at most one chunk of 20 can go out twice (with
            # the default of two in flight, two chunks can).
            broadcast_batches_in_flight=1,
        )
        async with AsyncExitStack() as stack:
            _, http = await open_api(stack, settings, key, client)
            yield c, http
    finally:
        c.stop_all()


def delivered(provider: FakeProvider, run: str) -> Counter[str]:
    """This run's sends by subject: the provider is the session's, and the shared database's
    outbox sweep may deliver another test's leftovers through this cluster too."""
    subjects = (r.json["subject"] for r in provider.requests("sendgrid") if r.status == 202)
    return Counter(s.removeprefix(run) for s in subjects if s.startswith(run))


async def publish_run(http: httpx.AsyncClient) -> str:
    """Publish ``EVENTS`` events; returns the prefix of their subjects."""
    run, sub = unique("run") + " ", unique("u")
    assert (await http.put(f"/v1/subscribers/{sub}", json={"email": "k@example.com"})).is_success
    flow = {
        "event_type": "crash.test",
        "steps": [{"channel": "email", "subject": run + "n{{ data.n }}", "text": "x"}],
    }
    assert (await http.put("/v1/flows/crash", json=flow)).is_success
    for n in range(EVENTS):
        r = await http.post(
            "/v1/events", json={"type": "crash.test", "to": [sub], "data": {"n": n}}
        )
        assert r.status_code == 202, r.text
    return run


async def until_delivered(provider: FakeProvider, run: str, count: int, within: float) -> None:
    for _ in range(int(within * 20)):
        if len(delivered(provider, run)) >= count:
            return
        await asyncio.sleep(0.05)


def report(provider: FakeProvider, run: str, what: str, at: int) -> tuple[list[str], int]:
    counts = delivered(provider, run)
    lost = sorted({f"n{n}" for n in range(EVENTS)} - set(counts))
    duplicates = sum(v - 1 for v in counts.values())
    sys.stderr.write(f"{what} after {at}/{EVENTS}: lost {len(lost)}, duplicates {duplicates}\n")
    return lost, duplicates


async def test_worker_sigkill_mid_run_loses_nothing(
    cluster: tuple[Cluster, httpx.AsyncClient], fresh_provider: FakeProvider
) -> None:
    c, http = cluster
    worker = c.start_worker()
    run = await publish_run(http)
    await until_delivered(fresh_provider, run, EVENTS // 3, within=30)
    os.killpg(worker.pid, signal.SIGKILL)  # mid-run, with activities in flight
    worker.wait(10)
    killed_at = len(delivered(fresh_provider, run))
    assert killed_at < EVENTS, "the run finished before the kill; nothing was proven"
    c.start_worker()
    await until_delivered(fresh_provider, run, EVENTS, within=120)
    lost, duplicates = report(fresh_provider, run, "worker SIGKILL", killed_at)
    assert lost == []
    # A send whose result the killed worker never recorded may go out again: counted and
    # reported, and bounded by what was in flight.
    assert duplicates <= IN_FLIGHT


async def test_temporal_restart_mid_run_loses_nothing(
    cluster: tuple[Cluster, httpx.AsyncClient], fresh_provider: FakeProvider
) -> None:
    c, http = cluster
    c.start_worker()
    run = await publish_run(http)
    await until_delivered(fresh_provider, run, EVENTS // 3, within=30)
    server = c.procs[0]
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)
    restarted_at = len(delivered(fresh_provider, run))
    assert restarted_at < EVENTS, "the run finished before the restart; nothing was proven"
    c.start_temporal()  # same SQLite file, same port
    await wait_port(c.port)
    await until_delivered(fresh_provider, run, EVENTS, within=180)
    lost, duplicates = report(fresh_provider, run, "Temporal restart", restarted_at)
    assert lost == []
    assert duplicates <= IN_FLIGHT


def personalized(provider: FakeProvider, prefix: str) -> Counter[str]:
    """This broadcast's recipients (one personalization each), by subject."""
    return Counter(
        p["subject"]
        for r in provider.requests("sendgrid")
        if r.status == 202
        for p in r.json["personalizations"]
        if p["subject"].startswith(prefix)
    )


async def until_personalized(
    provider: FakeProvider, prefix: str, count: int, within: float
) -> None:
    for _ in range(int(within * 20)):
        if len(personalized(provider, prefix)) >= count:
            return
        await asyncio.sleep(0.05)


async def test_worker_sigkill_mid_broadcast_skips_nobody(
    cluster: tuple[Cluster, httpx.AsyncClient], fresh_provider: FakeProvider
) -> None:
    c, http = cluster
    worker = c.start_worker()
    prefix = unique("m")
    members = [{"id": f"{prefix}-{n}", "email": f"m{n}@example.com"} for n in range(EVENTS)]
    assert (await http.post("/v1/subscribers/bulk", json={"subscribers": members})).is_success
    assert (await http.put("/v1/topics/all", json={"name": "everyone"})).is_success
    ids = [m["id"] for m in members]
    r = await http.post("/v1/topics/all/subscribers", json={"subscribers": ids})
    assert r.is_success, r.text
    step = {"channel": "email", "subject": "{{ subscriber.id }}", "text": "x"}
    flow = {"event_type": "crash.broadcast", "steps": [step]}
    assert (await http.put("/v1/flows/crash-broadcast", json=flow)).is_success
    body = {"flow": "crash-broadcast", "audience": {"topic": "all"}}
    r = await http.post("/v1/broadcasts", json=body)
    assert r.status_code == 202, r.text

    await until_personalized(fresh_provider, prefix, EVENTS // 3, within=60)
    os.killpg(worker.pid, signal.SIGKILL)  # mid-broadcast: a batch or its sends in flight
    worker.wait(10)
    killed_at = len(personalized(fresh_provider, prefix))
    assert killed_at < EVENTS, "the broadcast finished before the kill; nothing was proven"
    c.start_worker()
    await until_personalized(fresh_provider, prefix, EVENTS, within=180)

    counts = personalized(fresh_provider, prefix)
    lost = sorted(set(ids) - set(counts))
    duplicates = sum(v - 1 for v in counts.values())
    sys.stderr.write(f"broadcast SIGKILL after {killed_at}: lost {len(lost)}, dup {duplicates}\n")
    assert lost == []
    # At most the chunk in flight when the worker died goes out again (a batch of 20 here).
    assert duplicates <= 20
