"""``python -m ingest`` as a real process: SIGKILL mid-stream loses nothing, SIGTERM drains."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.conftest import Herald, unique
from tests.fakes.provider import FakeProvider
from tests.ingest.conftest import Consumers, Rabbit, events_by_key, output, until
from workflows.runtime import ALL_QUEUES

REPO = Path(__file__).resolve().parents[2]
# Enough that a SIGTERM after "50 more stored" still lands mid-stream on a fast consumer.
EVENTS = 300
STOPPED = re.compile(r"stopped: (\d+) accepted, (\d+) redelivered duplicates")


async def stop(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, int]:
    """SIGTERM, wait for a clean exit; returns the process's (accepted, duplicates)."""
    proc.send_signal(signal.SIGTERM)
    await until(lambda: proc.poll() is not None, 15, "a clean exit on SIGTERM")
    text = output(log)
    assert proc.returncode == 0, text
    found = STOPPED.search(text)
    assert found, text
    return int(found[1]), int(found[2])


async def test_sigkill_mid_stream_then_sigterm_lose_nothing_and_send_once(
    idle_herald: Herald, rabbit: Rabbit, consumers: Consumers, fresh_provider: FakeProvider
) -> None:
    herald = idle_herald
    sub, run = unique("u"), unique("run")
    await herald.put_subscriber(sub, email="ada@example.com")
    step = {"channel": "email", "subject": run + "-{{ data.n }}", "text": "x"}
    await herald.put_flow("ingested", event_type="order.placed", steps=[step])

    def stored() -> int:
        return len(events_by_key(herald.engine, herald.tenant))

    first, _ = await consumers.start()
    # Paused while the stream is published: a consumer as fast as the publisher would
    # otherwise take all of it before the kill, and the test would prove nothing.
    os.killpg(first.pid, signal.SIGSTOP)
    body = {"type": "order.placed", "to": [sub]}
    await rabbit.publish_many(
        [
            (f"{herald.tenant}.order.placed", {**body, "data": {"n": n}}, f"{run}-{n}")
            for n in range(EVENTS)
        ]
    )
    os.killpg(first.pid, signal.SIGCONT)
    await until(lambda: stored() >= 30, 30, "the first events")
    os.killpg(first.pid, signal.SIGKILL)  # mid-stream: messages held, some committed, unacked
    first.wait(10)
    killed_at = stored()
    assert killed_at < EVENTS, "the stream was over before the kill; nothing was proven"

    second, second_log = await consumers.start()
    await until(lambda: stored() >= min(killed_at + 50, EVENTS), 30, "more events")
    accepted, _ = await stop(second, second_log)  # drains: what it took is committed, acked
    assert killed_at + accepted < EVENTS, "the stream was over before SIGTERM"

    third, third_log = await consumers.start()
    await herald.serve(ALL_QUEUES)  # the workers: deliveries from here on

    def sent() -> Counter[str]:
        subjects = (r.json["subject"] for r in fresh_provider.requests("sendgrid"))
        return Counter(s for s in subjects if s.startswith(run))

    await until(lambda: len(sent()) == EVENTS, 120, "every event delivered")
    await asyncio.sleep(0.5)  # time for a duplicate to show
    _, duplicates = await stop(third, third_log)
    sys.stderr.write(f"ingest SIGKILL after {killed_at}/{EVENTS} events stored\n")

    assert max(sent().values()) == 1
    assert events_by_key(herald.engine, herald.tenant) == {f"{run}-{n}": 1 for n in range(EVENTS)}
    # The SIGTERM drain acked everything the second process committed: none came back.
    assert duplicates == 0
