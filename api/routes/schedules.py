"""Scheduled and recurring broadcasts: each one a Temporal Schedule, ``herald/{tenant}/{key}``.

Support staff see, pause and trigger the same schedules in the Temporal UI.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Body, HTTPException, Path, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from temporalio.client import (
    Client,
    Schedule,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from api import schedules as s
from api.deps import EngineDep, GatewayDep, SettingsDep, TenantDep, field_error
from api.responses import error
from api.routes.broadcasts import checked_audience, notification_template
from dispatching.temporal import TemporalGateway, TemporalUnavailableError
from store.broadcasts import BroadcastCreate, BroadcastError, check_broadcast
from store.db import read_scope

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

KeyPath = Annotated[str, Path(pattern=s.SCHEDULE_KEY_PATTERN, max_length=128)]
T = TypeVar("T")
_UNAVAILABLE = error(503, "Temporal is unreachable; retry")
# Every route but PUT names an existing schedule.
_EXISTING = {**_UNAVAILABLE, **error(404, "No schedule with this key")}


class Note(BaseModel):
    note: str | None = Field(default=None, max_length=500)


@router.put("/{key}", response_model=s.SchedulePublic, responses=_UNAVAILABLE)
async def put_schedule(
    key: KeyPath,
    body: s.ScheduleBody,
    tenant: TenantDep,
    engine: EngineDep,
    settings: SettingsDep,
    gateway: GatewayDep,
) -> s.SchedulePublic:
    """Create the schedule, or edit it in place (same id, history and UI page)."""
    given = body.given()
    if len(given) != 1:
        field = given[1] if given else "cron"
        raise field_error(["body", field], "give exactly one of cron, interval or at")
    event_type = await run_in_threadpool(_check_broadcast, engine, tenant, body.broadcast)
    template = notification_template(settings, tenant, "", event_type)
    target = body.broadcast.flow or f"event {event_type}"
    summary = f"schedule {key}: {target} → topic {body.broadcast.audience.get('topic')}"
    sid = s.schedule_id(tenant, key)

    def schedule(paused: bool) -> Schedule:
        return s.build(settings, tenant, key, body, template, paused=paused, summary=summary)

    async def apply(client: Client) -> s.SchedulePublic:
        try:
            handle = await client.create_schedule(
                sid,
                schedule(bool(body.paused)),
                search_attributes=s.tenant_attributes(tenant),
            )
        except ScheduleAlreadyRunningError:
            handle = client.get_schedule_handle(sid)

            def edit(current: ScheduleUpdateInput) -> ScheduleUpdate:
                state = current.description.schedule.state
                new = schedule(state.paused if body.paused is None else body.paused)
                if body.paused is None and state.paused:
                    new.state.note = state.note
                return ScheduleUpdate(schedule=new)

            await handle.update(edit)
        return await s.public(client, key, await handle.describe())

    try:
        return await _temporal(gateway, apply)
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise field_error(["body", given[0]], exc.message, "invalid_schedule") from exc
        raise


@router.get("/{key}", response_model=s.SchedulePublic, responses=_EXISTING)
async def get_schedule(key: KeyPath, tenant: TenantDep, gateway: GatewayDep) -> s.SchedulePublic:
    async def read(client: Client) -> s.SchedulePublic:
        handle = client.get_schedule_handle(s.schedule_id(tenant, key))
        return await s.public(client, key, await handle.describe())

    return await _temporal(gateway, read, key)


@router.delete(
    "/{key}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_EXISTING,
)
async def delete_schedule(key: KeyPath, tenant: TenantDep, gateway: GatewayDep) -> Response:
    """Stops future runs; a broadcast already running carries on (cancel it by its id)."""

    async def delete(client: Client) -> None:
        await client.get_schedule_handle(s.schedule_id(tenant, key)).delete()

    await _temporal(gateway, delete, key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{key}/trigger", response_model=s.SchedulePublic, responses=_EXISTING)
async def trigger_schedule(
    key: KeyPath, tenant: TenantDep, gateway: GatewayDep
) -> s.SchedulePublic:
    """Run it now; skipped if a run of this schedule is still going."""

    async def trigger(client: Client) -> s.SchedulePublic:
        handle = client.get_schedule_handle(s.schedule_id(tenant, key))
        await handle.trigger(overlap=ScheduleOverlapPolicy.SKIP)
        return await s.public(client, key, await handle.describe())

    return await _temporal(gateway, trigger, key)


@router.post("/{key}/pause", response_model=s.SchedulePublic, responses=_EXISTING)
async def pause_schedule(
    key: KeyPath,
    tenant: TenantDep,
    gateway: GatewayDep,
    body: Annotated[Note | None, Body()] = None,
) -> s.SchedulePublic:
    """No new runs until unpaused; the note shows in the Temporal UI."""
    note = (body.note if body else None) or "paused via the Herald API"

    async def pause(client: Client) -> s.SchedulePublic:
        handle = client.get_schedule_handle(s.schedule_id(tenant, key))
        await handle.pause(note=note)
        return await s.public(client, key, await handle.describe())

    return await _temporal(gateway, pause, key)


@router.post("/{key}/unpause", response_model=s.SchedulePublic, responses=_EXISTING)
async def unpause_schedule(
    key: KeyPath,
    tenant: TenantDep,
    gateway: GatewayDep,
    body: Annotated[Note | None, Body()] = None,
) -> s.SchedulePublic:
    note = (body.note if body else None) or "unpaused via the Herald API"

    async def unpause(client: Client) -> s.SchedulePublic:
        handle = client.get_schedule_handle(s.schedule_id(tenant, key))
        await handle.unpause(note=note)
        return await s.public(client, key, await handle.describe())

    return await _temporal(gateway, unpause, key)


async def _temporal(
    gateway: TemporalGateway, call: Callable[[Client], Awaitable[T]], key: str | None = None
) -> T:
    """Run ``call``: a missing schedule is 404 (when ``key`` names one), no Temporal is 503."""
    try:
        return await call(await gateway.client())
    except TemporalUnavailableError as exc:
        raise _unavailable() from exc
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND and key is not None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"schedule {key!r} not found") from exc
        if gateway.outage(exc):
            raise _unavailable() from exc
        raise


def _unavailable() -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Temporal is unreachable; retry")


def _check_broadcast(engine: Engine, tenant: str, body: BroadcastCreate) -> str:
    """The checks POST /v1/broadcasts makes, without storing anything; the event type."""
    loc: list[str | int] = ["body", "broadcast"]
    audience = checked_audience(body, loc)
    if body.send_at is not None:
        raise field_error([*loc, "send_at"], "a scheduled broadcast is sent when the schedule runs")
    if body.idempotency_key is not None:
        raise field_error(
            [*loc, "idempotency_key"], "each run is its own broadcast, keyed by its workflow id"
        )
    with read_scope(engine) as session:
        try:
            return check_broadcast(session, tenant, body, audience)[0].event_type
        except BroadcastError as exc:
            raise field_error([*loc, *exc.field], str(exc), "not_found") from exc
