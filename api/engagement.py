"""Wake the workflows that wait for engagement once a status change is committed."""

from __future__ import annotations

import asyncio

from core.lifecycle import ENGAGEMENT
from dispatching.temporal import TemporalGateway, signal_quietly
from store.lifecycle import Reached
from workflows.types import EngagementSignal


async def signal_reached(gateway: TemporalGateway, reached: list[Reached]) -> None:
    """One signal per delivery, with its furthest stage (an open implies delivery).

    Only notifications whose flow waits for, or is skipped by, engagement are signalled:
    each signal is a billed Temporal action. A lost signal costs no wrong send, because the
    send activity re-reads the stored status; a `wait` then runs to its full duration.
    """
    signals = []
    for r in reached:
        stages = [s for s in ENGAGEMENT if s in r.stages]
        if r.watches_engagement and stages:
            signal = EngagementSignal(delivery_id=r.delivery_id, stage=stages[-1])
            signals.append(signal_quietly(gateway, r.workflow_id, "engagement", signal))
    await asyncio.gather(*signals)
