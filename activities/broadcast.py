"""Broadcast bookkeeping: enroll the audience batch by batch, and close the broadcast."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.defn import uninterrupted
from core.audience import Audience
from core.flows import FlowDefinition
from core.preferences import next_local
from store.broadcasts import (
    Broadcast,
    BroadcastCreate,
    BroadcastError,
    cancel_pending,
    enroll,
    open_broadcast,
    set_status,
)
from store.db import session_scope
from store.topics import audience_page, audience_timezones


class EnrollInput(BaseModel):
    broadcast_id: str
    after: str | None = None
    limit: int = 200
    # A local-time broadcast enrolls one timezone at a time, when its hour comes.
    timezone: str | None = None


class ZonesInput(BaseModel):
    broadcast_id: str
    local_time: str
    # The instant the plan is made from: each zone fires at its next HH:MM after it.
    base: datetime


class ZoneFire(BaseModel):
    timezone: str
    at: datetime


class EnrolledItem(BaseModel):
    notification_id: str
    workflow_id: str
    flow_key: str
    subscriber_id: str
    delivery_ids: list[str | None]


class EnrollResult(BaseModel):
    items: list[EnrolledItem]
    # The flows as the batch's notifications froze them, by key.
    flows: dict[str, FlowDefinition]
    next_after: str | None
    scanned: int
    opted_out: int


class OpenInput(BaseModel):
    """A broadcast a schedule starts: the request, stored once per scheduled run."""

    tenant_id: str
    spec: dict[str, Any]


class OpenResult(BaseModel):
    broadcast_id: str
    event_id: str
    event_type: str
    total: int
    send_at: datetime | None
    local_time: str | None = None


class FinishInput(BaseModel):
    broadcast_id: str
    status: str


class StatusInput(BaseModel):
    broadcast_id: str
    status: str


class BroadcastActivities:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @uninterrupted("enroll_batch")
    def enroll_batch(self, inp: EnrollInput) -> EnrollResult:
        """One page of the audience: filtered, opt-outs dropped, notifications stored."""
        with session_scope(self.engine) as session:
            row = _broadcast(session, inp.broadcast_id)
            audience = Audience.model_validate(row.audience)
            if inp.timezone is not None:
                audience.where = {**audience.where, "timezone": inp.timezone}
            page = audience_page(session, row.tenant_id, audience, inp.after, inp.limit)
            enrolled = enroll(
                session,
                row,
                page.subscriber_ids,
                next_after=page.next_after,
                scanned=page.scanned,
                opted_out=len(page.opted_out),
            )
            items: list[EnrolledItem] = []
            flows: dict[str, FlowDefinition] = {}
            for p in enrolled.planned + enrolled.again:
                n = p.notification
                if not p.runs:
                    continue  # throttled at the door: stored as skipped, nothing to start
                items.append(
                    EnrolledItem(
                        notification_id=n.id,
                        workflow_id=n.workflow_id,
                        flow_key=n.flow_key,
                        subscriber_id=n.subscriber_id,
                        delivery_ids=p.delivery_ids,
                    )
                )
                flows.setdefault(n.flow_key, FlowDefinition.model_validate(n.flow))
        return EnrollResult(
            items=items,
            flows=flows,
            next_after=page.next_after,
            scanned=page.scanned,
            opted_out=len(page.opted_out),
        )

    @uninterrupted("open_broadcast")
    def open_broadcast(self, inp: OpenInput) -> OpenResult:
        """Store the run's broadcast, keyed by its workflow id (a retry finds the same one)."""
        workflow_id = activity.info().workflow_id
        try:
            body = BroadcastCreate.model_validate(inp.spec)
            audience = Audience.model_validate(body.audience)
            with session_scope(self.engine) as session:
                row, _ = open_broadcast(
                    session,
                    inp.tenant_id,
                    body,
                    audience,
                    idempotency_key=workflow_id,
                    workflow_id_for=lambda _: workflow_id,
                )
                return OpenResult(
                    broadcast_id=row.id,
                    event_id=row.event_id,
                    event_type=row.event_type,
                    total=row.total,
                    send_at=row.send_at,
                    local_time=row.local_time,
                )
        except (BroadcastError, ValidationError) as exc:
            # The flow or topic was deleted since the schedule was made: say so, once.
            raise ApplicationError(f"cannot open the broadcast: {exc}", non_retryable=True) from exc

    @uninterrupted("broadcast_timezones")
    def broadcast_timezones(self, inp: ZonesInput) -> list[ZoneFire]:
        """Every timezone of the audience with its next HH:MM, soonest first: a timer each."""
        with session_scope(self.engine) as session:
            row = _broadcast(session, inp.broadcast_id)
            topic = Audience.model_validate(row.audience).topic
            zones = audience_timezones(session, row.tenant_id, topic)
        fires = [ZoneFire(timezone=z, at=next_local(inp.local_time, inp.base, z)) for z in zones]
        return sorted(fires, key=lambda f: (f.at, f.timezone))

    @uninterrupted("set_broadcast_status")
    def set_broadcast_status(self, inp: StatusInput) -> None:
        with session_scope(self.engine) as session:
            set_status(session, inp.broadcast_id, inp.status)

    @uninterrupted("finish_broadcast")
    def finish_broadcast(self, inp: FinishInput) -> int:
        """Completed or cancelled; a cancellation stops what has not been sent yet."""
        with session_scope(self.engine) as session:
            set_status(session, inp.broadcast_id, inp.status)
            if inp.status != "cancelled":
                return 0
            return len(cancel_pending(session, inp.broadcast_id))


def _broadcast(session: Session, broadcast_id: str) -> Broadcast:
    """The broadcast's row; gone (a reset database) is final, not worth retrying."""
    row = session.get(Broadcast, broadcast_id)
    if row is None:
        raise ApplicationError(f"broadcast {broadcast_id} does not exist", non_retryable=True)
    return row
