"""One way to connect to Temporal, so the API and the worker agree on the data converter."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig

from core.settings import Settings

log = logging.getLogger(__name__)


async def connect(
    settings: Settings, interceptors: Sequence[Interceptor] = (), runtime: Runtime | None = None
) -> Client:
    """``interceptors``: tracing (core.telemetry), which workers built on the client share;
    ``runtime``: the worker's, when it exports the SDK's own metrics."""
    options: dict[str, Any] = {"interceptors": list(interceptors)}
    if runtime is not None:
        options["runtime"] = runtime
    return await connect_when_ready(
        settings.temporal_target, **connect_options(settings), **options
    )


def connect_options(settings: Settings) -> dict[str, Any]:
    """``Client.connect`` keyword arguments for the namespace, TLS (mTLS) and API key.

    Files are read here, at connect time, so a rotated certificate is picked up on restart.
    An API key is only ever sent over TLS, as Temporal Cloud requires.
    """
    options: dict[str, Any] = {"namespace": settings.temporal_namespace}
    if settings.temporal_api_key is not None:
        options["api_key"] = settings.temporal_api_key.get_secret_value()
    if not settings.temporal_uses_tls:
        options["tls"] = False
        return options

    def read(path: Path | None) -> bytes | None:
        return None if path is None else path.read_bytes()

    options["tls"] = TLSConfig(
        server_root_ca_cert=read(settings.temporal_tls_ca),
        domain=settings.temporal_tls_server_name,
        client_cert=read(settings.temporal_tls_cert),
        client_private_key=read(settings.temporal_tls_key),
    )
    return options


def metrics_runtime(bind_address: str) -> Runtime:
    """A Temporal runtime serving the SDK's Prometheus metrics (task slots, poll and
    schedule-to-start latencies, sticky cache) at ``bind_address`` ("host:port")."""
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind_address)))


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
