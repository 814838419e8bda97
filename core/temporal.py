"""One way to connect to Temporal, so the API and the worker agree on the data converter."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter

from core.settings import Settings

log = logging.getLogger(__name__)


async def connect(settings: Settings, interceptors: Sequence[Interceptor] = ()) -> Client:
    """``interceptors``: tracing (core.telemetry), which workers built on the client share."""
    return await connect_when_ready(
        settings.temporal_target,
        namespace=settings.temporal_namespace,
        interceptors=list(interceptors),
    )


async def connect_when_ready(target: str, within: float = 60, **options: Any) -> Client:
    """Connect, waiting out a server that accepts TCP before its frontend is healthy.

    A freshly started (or restarted) dev server opens its port a moment before it answers
    ``GetSystemInfo``; a process started beside it would otherwise die on its first try.
    """
    options.setdefault("data_converter", pydantic_data_converter)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await Client.connect(target, **options)
        except RuntimeError as exc:
            if loop.time() >= deadline:
                raise
            log.info("Temporal at %s is not ready yet (%s); retrying", target, exc)
            await asyncio.sleep(0.5)


def exit_process(code: int) -> NoReturn:
    """End a process that used a Temporal client without running interpreter teardown.

    The SDK's Rust threads can still hold a GIL state while CPython finalizes, which
    aborts a clean shutdown with ``PyGILState_Release`` (temporalio/sdk-python#300).
    Everything worth keeping is flushed first; nothing else runs at exit in Herald.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
