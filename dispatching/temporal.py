"""A lazily connected Temporal client, so a process starts (and says so) while Temporal is down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from temporalio.client import Client, Interceptor
from temporalio.service import RPCError, RPCStatusCode

from core.settings import Settings
from core.temporal import connect

log = logging.getLogger(__name__)


class TemporalUnavailableError(Exception):
    pass


class TemporalGateway:
    def __init__(
        self,
        settings: Settings,
        client: Client | None = None,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self._settings = settings
        self._client = client
        self._interceptors = interceptors
        self._lock = asyncio.Lock()
        self.last_error: str | None = None

    @property
    def reachable(self) -> bool:
        """What the last contact said; the API answers 503 while this is False."""
        return self.last_error is None

    def mark_unreachable(self, exc: BaseException) -> None:
        self.last_error = str(exc) or type(exc).__name__

    def mark_reachable(self) -> None:
        self.last_error = None

    def outage(self, exc: RPCError) -> bool:
        """Whether the RPC failed because Temporal is out of reach (then marked so)."""
        if exc.status not in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return False
        self.mark_unreachable(exc)
        return True

    async def client(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(
                        connect(self._settings, self._interceptors),
                        timeout=self._settings.temporal_connect_timeout_seconds,
                    )
                except Exception as exc:
                    log.warning(
                        "cannot reach Temporal at %s: %s", self._settings.temporal_target, exc
                    )
                    self.mark_unreachable(exc)
                    raise TemporalUnavailableError(str(exc)) from exc
            return self._client

    async def healthy(self) -> bool:
        try:
            client = await self.client()
            ok = await asyncio.wait_for(client.service_client.check_health(), timeout=3)
        except Exception as exc:
            self.mark_unreachable(exc)
            return False
        if ok:
            self.mark_reachable()
        return bool(ok)


async def signal_open(client: Client, workflow_id: str, name: str, *args: object) -> bool:
    """Signal a workflow; False when it is closed or gone. Other errors raise."""
    try:
        await client.get_workflow_handle(workflow_id).signal(name, args=list(args))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def signal_quietly(
    gateway: TemporalGateway, workflow_id: str, name: str, *args: object
) -> None:
    """The stored state already decides; the signal only wakes a sleeping workflow."""
    try:
        await signal_open(await gateway.client(), workflow_id, name, *args)
    except RPCError as exc:
        gateway.mark_unreachable(exc)
        log.warning("could not signal %s to %s: %s", name, workflow_id, exc)
    except TemporalUnavailableError as exc:
        log.warning("could not signal %s to %s: %s", name, workflow_id, exc)
