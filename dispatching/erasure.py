"""Stop an erased subscriber's running workflows, once their rows are gone.

Termination (reason "subscriber erased") needs no worker and runs none of the workflow's
code, so nothing is sent after it. The workflows come from the database (notifications that
had not finished) and from Temporal's visibility (digests, which no row names). One that
cannot be reached now ends as orphaned at its next step, when it finds its rows gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from dispatching.temporal import TemporalGateway, TemporalUnavailableError

log = logging.getLogger(__name__)

ERASED = "subscriber erased"
_IN_FLIGHT = 16
_VISIBILITY_LIMIT = 10_000


@dataclass
class Stopped:
    stopped: int = 0
    # Temporal could not be told (down): these end as orphaned at their next step.
    not_reached: int = 0


async def stop_workflows(
    gateway: TemporalGateway, tenant_id: str, subscriber_id: str, workflow_ids: Iterable[str]
) -> Stopped:
    ids = set(workflow_ids)
    try:
        client = await gateway.client()
        ids |= await _running(client, tenant_id, subscriber_id)
    except (TemporalUnavailableError, RPCError) as exc:
        if isinstance(exc, RPCError):
            gateway.mark_unreachable(exc)
        log.warning("erasure: cannot reach Temporal to stop %d workflow(s): %s", len(ids), exc)
        return Stopped(not_reached=len(ids))
    gate = asyncio.Semaphore(_IN_FLIGHT)
    outcomes = await asyncio.gather(*(_terminate(client, gate, wf) for wf in sorted(ids)))
    return Stopped(
        stopped=sum(o is True for o in outcomes), not_reached=sum(o is None for o in outcomes)
    )


async def _running(client: Client, tenant_id: str, subscriber_id: str) -> set[str]:
    """Running workflows of the subscriber as Temporal's visibility knows them."""
    query = (
        f"HeraldTenant = {_quote(tenant_id)} AND HeraldSubscriber = {_quote(subscriber_id)}"
        ' AND ExecutionStatus = "Running"'
    )
    found: set[str] = set()
    async for execution in client.list_workflows(query, limit=_VISIBILITY_LIMIT):
        found.add(execution.id)
    return found


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _terminate(client: Client, gate: asyncio.Semaphore, workflow_id: str) -> bool | None:
    """True: stopped; False: not running (finished, or never started); None: not reached."""
    async with gate:
        try:
            await client.get_workflow_handle(workflow_id).terminate(reason=ERASED)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            log.warning("erasure: could not terminate %s: %s", workflow_id, exc)
            return None
    return True
