"""Dead letters: find failed deliveries and ask their workflows to retry them."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, HTTPException, Path, Query, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.engine import Engine
from temporalio.service import RPCError

from api.deps import (
    EngineDep,
    GatewayDep,
    ReadSessionDep,
    Ref,
    SettingsDep,
    TenantDep,
    TextQuery,
    temporal_unavailable,
)
from api.engagement import signal_reached
from api.methods import names_a_sibling, other_than, segment
from api.responses import error
from core.lifecycle import Kind, Observation, Source
from core.settings import Settings
from core.types import Channel, DeliveryStatus
from dispatching.outbox import retry_with_start
from dispatching.temporal import TemporalGateway, TemporalUnavailableError, signal_open
from store.db import read_scope
from store.deliveries import delivery_detail, failed_deliveries, notification_for
from store.events import AcceptedEvent, accepted_notification
from store.lifecycle import record_batch
from store.models import (
    NO_NUL,
    DeadLetterPublic,
    Delivery,
    DeliveryDetail,
    IsoDateTime,
    Notification,
    Opened,
    RetryAccepted,
    RetryFilter,
)
from workflows.types import RetryRequest

router = APIRouter(tags=["deliveries"])
DELIVERY_NOT_FOUND = error(404, "No delivery with this id")
RETRY_UNAVAILABLE = error(503, "Temporal is unreachable; nothing was retried")


@router.get("/v1/deliveries", response_model=list[DeadLetterPublic])
def list_deliveries(
    session: ReadSessionDep,
    tenant: TenantDep,
    status_: Annotated[DeliveryStatus, Query(alias="status")] = DeliveryStatus.FAILED,
    channel: Channel | None = None,
    flow: TextQuery = None,
    since: IsoDateTime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetterPublic]:
    """The dead-letter view with ``status=failed`` (the default), newest first."""
    rows = failed_deliveries(
        session,
        tenant,
        status=status_,
        channel=None if channel is None else channel.value,
        flow=flow,
        since=since,
        limit=limit,
    )
    return [_public(r.delivery, r.notification) for r in rows]


@router.post(
    "/v1/notifications/{notification_id}/retry",
    response_model=RetryAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **error(404, "No notification with this id"),
        **error(409, "Closed: its dead-letter retention has passed, or nothing failed"),
        **RETRY_UNAVAILABLE,
    },
)
async def retry_notification(
    notification_id: Ref,
    session: ReadSessionDep,
    tenant: TenantDep,
    gateway: GatewayDep,
    engine: EngineDep,
    settings: SettingsDep,
    body: RetryRequest | None = None,
) -> RetryAccepted:
    """Re-attempt this notification's failed deliveries (or one channel's)."""
    notification = notification_for(session, tenant, notification_id)
    if notification is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"notification {notification_id!r} not found"
        )
    if not await _retry(gateway, settings, engine, notification, body or RetryRequest()):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"notification {notification_id!r} is closed: its dead-letter retention has passed "
            "or nothing failed",
        )
    return RetryAccepted(notifications=[notification_id])


@router.post(
    "/v1/deliveries/retry",
    response_model=RetryAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=RETRY_UNAVAILABLE,
)
async def retry_deliveries(
    body: RetryFilter,
    session: ReadSessionDep,
    tenant: TenantDep,
    gateway: GatewayDep,
    engine: EngineDep,
    settings: SettingsDep,
) -> RetryAccepted:
    """Retry every failed delivery matching the filter; closed notifications are left out."""
    rows = failed_deliveries(
        session,
        tenant,
        channel=None if body.channel is None else body.channel.value,
        flow=body.flow,
        since=body.since,
        limit=body.limit,
    )
    targets = {r.notification.id: r.notification for r in rows}
    request = RetryRequest(channel=body.channel)
    sent = await asyncio.gather(
        *(_retry(gateway, settings, engine, n, request) for n in targets.values())
    )
    return RetryAccepted(notifications=[n for n, ok in zip(targets, sent, strict=True) if ok])


@router.get(
    f"/v1/deliveries/{segment('delivery_id', 'retry')}",
    response_model=DeliveryDetail,
    responses={**DELIVERY_NOT_FOUND, **names_a_sibling("retry")},
)
def get_delivery(
    delivery_id: Annotated[str, Path(pattern=NO_NUL, json_schema_extra=other_than("retry"))],
    session: ReadSessionDep,
    tenant: TenantDep,
) -> DeliveryDetail:
    """The delivery's timeline: sent, delivered, opened, every click, bounce reason."""
    detail = delivery_detail(session, tenant, delivery_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"delivery {delivery_id!r} not found")
    return detail


@router.post(
    "/v1/deliveries/{delivery_id}/opened",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryDetail,
    responses=DELIVERY_NOT_FOUND,
)
async def report_opened(
    delivery_id: Ref,
    tenant: TenantDep,
    engine: EngineDep,
    gateway: GatewayDep,
    tasks: BackgroundTasks,
    body: Opened | None = None,
) -> DeliveryDetail:
    """An app saw its push (or any message) opened; FCM itself reports no receipts."""
    obs = Observation(
        Kind.OPENED,
        Source.APP,
        delivery_id,
        tenant_id=tenant,
        occurred_at=None if body is None else body.occurred_at,
    )
    recorded = await run_in_threadpool(record_batch, engine, [obs])
    if recorded.unknown:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"delivery {delivery_id!r} not found")
    tasks.add_task(signal_reached, gateway, recorded.reached)
    detail = await run_in_threadpool(_detail, engine, tenant, delivery_id)
    assert detail is not None
    return detail


def _detail(engine: Engine, tenant: str, delivery_id: str) -> DeliveryDetail | None:
    with read_scope(engine) as session:
        return delivery_detail(session, tenant, delivery_id)


async def _retry(
    gateway: TemporalGateway,
    settings: Settings,
    engine: Engine,
    notification: Notification,
    request: RetryRequest,
) -> bool:
    """False when the notification has completed: nothing is left to retry.

    A broadcast's fast path sent without a notification workflow; its retry starts one.
    Temporal out of reach is a 503: the caller retries, nothing was lost.
    """
    try:
        client = await gateway.client()
        if notification.broadcast_id is None:
            return await signal_open(client, notification.workflow_id, "retry", request)
        accepted = await run_in_threadpool(_accepted, engine, notification)
        if accepted is None:
            return False
        return await retry_with_start(client, settings, accepted, request)
    except TemporalUnavailableError as exc:
        raise temporal_unavailable(f"Temporal is unreachable: {exc}") from exc
    except RPCError as exc:
        if not gateway.outage(exc):
            raise
        raise temporal_unavailable(f"Temporal is unreachable: {exc.message}") from exc


def _accepted(engine: Engine, notification: Notification) -> AcceptedEvent | None:
    with read_scope(engine) as session:
        return accepted_notification(session, notification)


def _public(d: Delivery, n: Notification) -> DeadLetterPublic:
    return DeadLetterPublic(
        delivery_id=d.id,
        channel=d.channel,
        status=d.status,
        reason=d.reason,
        attempts=d.attempts,
        provider=d.provider,
        updated_at=d.updated_at,
        notification_id=n.id,
        event_id=n.event_id,
        flow=n.flow_key,
        subscriber_id=n.subscriber_id,
        workflow_id=n.workflow_id,
    )
