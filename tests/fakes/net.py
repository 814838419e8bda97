"""Loopback helpers for tests and the bench that run real processes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(
    port: int, within: float = 60, alive: Callable[[], bool] | None = None, name: str = "server"
) -> None:
    """Wait until something accepts on ``port``; fail fast if its process died."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"{name} exited before opening port {port}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{name} did not open port {port} within {within:.0f}s")
