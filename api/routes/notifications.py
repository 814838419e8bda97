"""Acknowledge a notification; cancel pending notifications by key.

The database is written first and is what every step checks, so a signal that
cannot reach Temporal delays the effect to the next step instead of losing it.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.engine import Engine

from api.deps import EngineDep, GatewayDep, Ref, TenantDep
from api.responses import error
from dispatching.temporal import signal_quietly
from store.db import session_scope
from store.models import Acknowledged, CancelRequest, CancelResult, Notification
from store.notifications import acknowledge, cancel_by_key
from workflows.types import StopRequest

router = APIRouter(tags=["notifications"])


@router.post(
    "/v1/notifications/{notification_id}/ack",
    response_model=Acknowledged,
    status_code=status.HTTP_202_ACCEPTED,
    responses=error(404, "No notification with this id"),
)
async def ack_notification(
    notification_id: Ref, tenant: TenantDep, engine: EngineDep, gateway: GatewayDep
) -> Acknowledged:
    """Ends a `wait` early; sends marked `unless: acknowledged` are skipped."""
    row = await run_in_threadpool(_ack, engine, tenant, notification_id)
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"notification {notification_id!r} not found"
        )
    await signal_quietly(gateway, row.workflow_id, "acknowledge")
    assert row.acknowledged_at is not None
    return Acknowledged(id=row.id, acknowledged_at=row.acknowledged_at)


@router.post("/v1/events/cancel", response_model=CancelResult)
async def cancel_events(
    body: CancelRequest, tenant: TenantDep, engine: EngineDep, gateway: GatewayDep
) -> CancelResult:
    """Stop every pending notification of events carrying this cancellation_key."""
    stopped = await run_in_threadpool(_cancel, engine, tenant, body.cancellation_key)
    reason = f"cancelled by cancellation_key {body.cancellation_key!r}"
    await asyncio.gather(
        *(signal_quietly(gateway, wf, "stop", StopRequest(reason=reason)) for _, wf in stopped)
    )
    return CancelResult(cancelled=[n for n, _ in stopped])


def _ack(engine: Engine, tenant: str, notification_id: str) -> Notification | None:
    with session_scope(engine) as session:
        row = acknowledge(session, tenant, notification_id)
        if row is not None:
            session.expunge(row)
        return row


def _cancel(engine: Engine, tenant: str, key: str) -> list[tuple[str, str]]:
    with session_scope(engine) as session:
        return cancel_by_key(session, tenant, key)
