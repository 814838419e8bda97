"""worker.py as a process: its Prometheus endpoint."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from temporalio.testing import WorkflowEnvironment

from tests.fakes.net import free_port, wait_port

REPO = Path(__file__).resolve().parent.parent


async def test_worker_serves_its_metrics_on_the_configured_port(
    temporal_env: WorkflowEnvironment, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {
        "HERALD_ENV": "test",
        "HERALD_DATABASE_URL": database_url,
        "HERALD_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "HERALD_WORKER_METRICS_PORT": str(port),
    }
    log = (tmp_path / "worker.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "worker.py",
        "--queues",
        "email",
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await wait_port(port, alive=lambda: proc.returncode is None, name="worker metrics")
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200
        names = {s.name for f in text_string_to_metric_families(r.text) for s in f.samples}
        # The schema check at start ran statements; the counter saw them.
        assert "herald_db_statements_total" in names
        for _ in range(300):  # connected and serving: SIGTERM now is a clean shutdown
            if "serving email" in (tmp_path / "worker.log").read_text():
                break
            await asyncio.sleep(0.1)
        # Once polling, the Temporal SDK's own metrics are on the same port.
        for _ in range(100):
            async with httpx.AsyncClient() as http:
                r = await http.get(f"http://127.0.0.1:{port}/metrics")
            families = {f.name for f in text_string_to_metric_families(r.text)}
            if "temporal_worker_task_slots_available" in families:
                break
            await asyncio.sleep(0.1)
        assert "temporal_worker_task_slots_available" in families, sorted(families)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, (tmp_path / "worker.log").read_text()
