"""The raw ceiling's worker, its own process like Herald's worker.

``python -m bench.raw_worker --address A --task-queue Q``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from temporalio.client import Client
from temporalio.worker import Worker

from bench.raw import RawWorkflow, raw_post


async def _serve(address: str, task_queue: str) -> None:
    client = await Client.connect(address)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[RawWorkflow],
        activities=[raw_post],
        max_concurrent_activities=64,
    )
    split = Worker(
        client,
        task_queue=f"{task_queue}-activities",
        activities=[raw_post],
        max_concurrent_activities=64,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker, split:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(args.address, args.task_queue))
