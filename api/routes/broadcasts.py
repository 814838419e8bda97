"""Broadcasts: one message to a topic's audience, durable, pausable and cancellable."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api.bodies import BroadcastIn
from api.deps import (
    EngineDep,
    GatewayDep,
    ReadSessionDep,
    Ref,
    SettingsDep,
    TenantDep,
    field_error,
)
from api.responses import error
from core.audience import Audience
from core.flows import FlowDefinition
from core.settings import Settings
from core.types import broadcast_workflow_id
from dispatching.outbox import configured
from dispatching.temporal import TemporalGateway, TemporalUnavailableError, signal_quietly
from store import broadcasts as q
from store.db import read_scope, session_scope
from store.models import utcnow
from workflows.broadcast import SA_BROADCAST, BroadcastWorkflow
from workflows.notification import SA_TENANT
from workflows.types import BroadcastInput, NotificationInput

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/broadcasts", tags=["broadcasts"])
NOT_FOUND = error(404, "No broadcast with this id")


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=q.BroadcastPublic,
    responses={
        200: {"model": q.BroadcastPublic, "description": "Repeated idempotency key: the same one"},
        **error(503, "Stored, but Temporal is unreachable; repeat with the same key"),
    },
)
async def create_broadcast(
    body: BroadcastIn,
    tenant: TenantDep,
    engine: EngineDep,
    settings: SettingsDep,
    gateway: GatewayDep,
) -> JSONResponse:
    """Send one event's flow(s) to every member of an audience (a topic, maybe filtered)."""
    audience = checked_audience(body, ["body"])
    if body.send_at is not None and body.send_at.tzinfo is None:
        raise field_error(["body", "send_at"], "needs a timezone, e.g. 2026-12-01T09:00:00Z")
    row, created, template = await run_in_threadpool(
        _create, engine, settings, tenant, body, audience
    )
    try:
        await _start(gateway, settings, row, template)
    except TemporalUnavailableError as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail={
                "message": "broadcast stored but not started: Temporal is unreachable; "
                "repeat the request with the same idempotency_key",
                "broadcast_id": row.id,
            },
        ) from exc
    detail = await run_in_threadpool(_public, engine, tenant, row.id)
    return JSONResponse(
        status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        content=detail.model_dump(mode="json"),
    )


@router.get("/{broadcast_id}", response_model=q.BroadcastPublic, responses=NOT_FOUND)
def get_broadcast(
    broadcast_id: Ref, session: ReadSessionDep, tenant: TenantDep
) -> q.BroadcastPublic:
    row = q.get_broadcast(session, tenant, broadcast_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"broadcast {broadcast_id!r} not found")
    return q.public(session, row)


@router.post(
    "/{broadcast_id}/{action}",
    response_model=q.BroadcastPublic,
    responses={**NOT_FOUND, **error(409, "The broadcast is cancelled or completed")},
)
async def control_broadcast(
    broadcast_id: Ref, action: str, tenant: TenantDep, engine: EngineDep, gateway: GatewayDep
) -> q.BroadcastPublic:
    """``pause``, ``resume`` or ``cancel``: stored first, then signalled to the workflow."""
    new = {"pause": "paused", "resume": "running", "cancel": "cancelled"}.get(action)
    if new is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no action {action!r}")
    row = await run_in_threadpool(_control, engine, tenant, broadcast_id, new)
    await signal_quietly(gateway, row.workflow_id, action)
    return await run_in_threadpool(_public, engine, tenant, broadcast_id)


def checked_audience(body: q.BroadcastCreate, loc: list[str | int]) -> Audience:
    """Exactly one of flow or event_type, and a valid audience; 422s under ``loc``."""
    if (body.event_type is None) == (body.flow is None):
        raise field_error([*loc, "flow"], "give exactly one of flow or event_type")
    try:
        return Audience.model_validate(body.audience)
    except ValidationError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[
                {**e, "loc": [*loc, "audience", *e["loc"]]}
                for e in exc.errors(include_url=False, include_context=False)
            ],
        ) from exc


def _create(
    engine: Engine, settings: Settings, tenant: str, body: q.BroadcastCreate, audience: Audience
) -> tuple[q.Broadcast, bool, NotificationInput]:
    with session_scope(engine) as session:
        try:
            row, created = q.open_broadcast(
                session,
                tenant,
                body,
                audience,
                idempotency_key=body.idempotency_key,
                workflow_id_for=lambda bid: broadcast_workflow_id(tenant, bid),
            )
        except q.BroadcastError as exc:
            raise field_error(["body", *exc.field], str(exc), "not_found") from exc
        template = notification_template(settings, tenant, row.event_id, row.event_type)
        session.expunge(row)
        return row, created, template


def notification_template(
    settings: Settings, tenant: str, event_id: str, event_type: str
) -> NotificationInput:
    """What every notification of a broadcast shares; each child lays its own ids over it."""
    return NotificationInput(
        tenant_id=tenant,
        notification_id="",
        event_id=event_id,
        event_type=event_type,
        subscriber_id="",
        flow=FlowDefinition(key="-", event_type=event_type, steps=[]),
        delivery_ids=[],
        **configured(settings),
    )


async def _start(
    gateway: TemporalGateway, settings: Settings, row: q.Broadcast, template: NotificationInput
) -> None:
    """Idempotent: a repeated request joins the running broadcast, never starts a second."""
    client = await gateway.client()
    inp = BroadcastInput(
        tenant_id=row.tenant_id,
        broadcast_id=row.id,
        total=row.total,
        send_at=row.send_at,
        local_time=row.local_time,
        template=template,
        batch_size=settings.broadcast_batch_size,
        batches_in_flight=settings.broadcast_batches_in_flight,
    )
    attributes: list[SearchAttributePair[Any]] = [
        SearchAttributePair(SA_TENANT, row.tenant_id),
        SearchAttributePair(SA_BROADCAST, row.id),
    ]
    try:
        await client.start_workflow(
            BroadcastWorkflow.run,
            inp,
            id=row.workflow_id,
            task_queue=settings.workflow_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(attributes),
            static_summary=f"broadcast {row.id}: {row.event_type} → topic "
            f"{row.audience.get('topic')} ({row.total:,} members)",
        )
    except WorkflowAlreadyStartedError:
        log.debug("broadcast %s already ran; start is a no-op", row.id)
    except RPCError as exc:
        gateway.mark_unreachable(exc)
        raise TemporalUnavailableError(str(exc)) from exc


def _control(engine: Engine, tenant: str, broadcast_id: str, new: str) -> q.Broadcast:
    with session_scope(engine) as session:
        row = q.get_broadcast(session, tenant, broadcast_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"broadcast {broadcast_id!r} not found")
        if row.status in (q.BroadcastStatus.CANCELLED, q.BroadcastStatus.COMPLETED):
            raise HTTPException(status.HTTP_409_CONFLICT, f"broadcast is {row.status}")
        if new == q.BroadcastStatus.RUNNING and row.enrolled == 0 and row.send_at is not None:
            new = q.BroadcastStatus.SCHEDULED if row.send_at > utcnow() else new
        q.set_status(session, broadcast_id, new)
        if new == q.BroadcastStatus.CANCELLED:
            q.cancel_pending(session, broadcast_id)
        session.expunge(row)
        return row


def _public(engine: Engine, tenant: str, broadcast_id: str) -> q.BroadcastPublic:
    with read_scope(engine) as session:
        row = q.get_broadcast(session, tenant, broadcast_id)
        assert row is not None
        return q.public(session, row)
