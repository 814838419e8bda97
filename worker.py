"""Run Herald's Temporal workers: ``python worker.py [--queues email,sms]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket

from prometheus_client import start_http_server

from core.heap import freeze_startup_heap
from core.metrics import serve_sdk_metrics
from core.settings import get_settings
from core.telemetry import Telemetry, configure_logging
from core.temporal import connect, exit_process, metrics_runtime
from store.db import make_engine
from store.schema import require_current
from workflows.retention import ensure_retention_schedule
from workflows.runtime import ALL_QUEUES, build_workers, parse_queues

log = logging.getLogger("herald.worker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(queues_spec: str | None) -> None:
    settings = get_settings()
    queues = parse_queues(queues_spec)
    runtime = None
    if settings.worker_metrics_port is not None:
        # The SDK serves its metrics on a loopback port of its own; Herald's port re-serves
        # them, so one scrape has both.
        sdk_address = f"127.0.0.1:{free_port()}"
        runtime = metrics_runtime(sdk_address)
        serve_sdk_metrics(f"http://{sdk_address}/metrics")
        start_http_server(settings.worker_metrics_port, settings.worker_metrics_host)
        log.info(
            "metrics on http://%s:%d/metrics",
            settings.worker_metrics_host,
            settings.worker_metrics_port,
        )
    engine = make_engine(settings.database_url)
    require_current(engine)  # `herald migrate` makes and upgrades the schema
    telemetry = Telemetry.start(settings, "herald-worker")
    client = await connect(settings, telemetry.interceptors(), runtime)
    workers, executor = build_workers(client, settings, engine, queues)
    await ensure_retention_schedule(client, settings, queues)
    freeze_startup_heap(settings.gc_freeze)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    log.info("serving %s on %s", ", ".join(queues), settings.temporal_target)
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
    for task in tasks:
        if task in done and task.exception():
            raise task.exception()  # type: ignore[misc]
    executor.shutdown(wait=True)
    engine.dispose()
    telemetry.shutdown()
    log.info("worker stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--queues", help=f"comma-separated subset of {','.join(ALL_QUEUES)} (default: all)"
    )
    args = parser.parse_args()
    configure_logging(get_settings())
    try:
        asyncio.run(main(args.queues))
    except Exception:
        log.exception("worker failed")
        exit_process(1)
    exit_process(0)
