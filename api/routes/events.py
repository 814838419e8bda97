from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from api.deps import (
    CommitsDep,
    DispatcherDep,
    EngineDep,
    GatewayDep,
    ReadSessionDep,
    Ref,
    SettingsDep,
    TenantDep,
    field_error,
    temporal_unavailable,
)
from api.methods import names_a_sibling, other_than, segment
from api.responses import error
from core.limits import WorkflowInputTooLargeError, limits
from core.settings import Settings
from core.types import new_id
from dispatching.outbox import DispatchRefusedError, dispatch
from dispatching.temporal import TemporalGateway, TemporalUnavailableError
from store import events as q
from store.db import read_scope
from store.deliveries import clicks_for
from store.flows import get_flow
from store.intake import AcceptRequest
from store.models import (
    NO_NUL,
    DeliveryPublic,
    EventAccepted,
    EventCreate,
    EventPublic,
    Flow,
    InlineSubscriber,
    NotificationPublic,
    NotificationRef,
    ReplayCreate,
    ReplayItem,
    ReplayQuery,
    ReplayResult,
)
from store.outbox import failure_of

router = APIRouter(prefix="/v1/events", tags=["events"])
NOT_FOUND = error(404, "No event with this id")
REPLAY_UNAVAILABLE = error(503, "Stored, but Temporal is unreachable; repeat with the replay_id")


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EventAccepted,
    responses={
        200: {"model": EventAccepted, "description": "Repeated idempotency key: the first result"},
        **error(409, "Idempotency key reused with a different body"),
        **error(503, "Stored, but Temporal is unreachable; not dispatched yet"),
    },
)
async def publish_event(
    body: EventCreate,
    tenant: TenantDep,
    commits: CommitsDep,
    settings: SettingsDep,
    gateway: GatewayDep,
    dispatcher: DispatcherDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", max_length=255, pattern=NO_NUL)
    ] = None,
) -> JSONResponse:
    """Store the event and start one notification per matching flow and recipient."""
    if idempotency_key and body.idempotency_key and idempotency_key != body.idempotency_key:
        raise field_error(
            ["body", "idempotency_key"],
            "differs from the Idempotency-Key header",
            "idempotency_key_mismatch",
        )
    key = idempotency_key or body.idempotency_key
    recipients = q.recipient_specs(body)
    try:
        # Concurrent requests share a transaction: under a burst, one commit for many.
        with dispatcher.give_way.accepting():
            accepted = await commits.accept(
                tenant,
                AcceptRequest(
                    type=body.type,
                    data=body.data,
                    actor=body.actor,
                    recipients=recipients,
                    idempotency_key=key,
                    cancellation_key=body.cancellation_key,
                    request_fingerprint=q.fingerprint(
                        body.model_dump(mode="json", exclude={"idempotency_key"})
                    ),
                ),
            )
    except q.UnknownSubscribersError as exc:
        index: dict[str, int] = {}
        for i, item in enumerate(body.to):  # positions in the request, duplicates included
            index.setdefault(item.id if isinstance(item, InlineSubscriber) else item, i)
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[
                {
                    "loc": ["body", "to", index[sid]],
                    "msg": f"unknown subscriber {sid!r}; create it first or pass its fields inline",
                    "type": "unknown_subscriber",
                }
                for sid in exc.ids
            ],
        ) from exc
    except q.IdempotencyConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except WorkflowInputTooLargeError as exc:
        raise field_error(["body", "type"], str(exc), "workflow_input_too_large") from exc

    if accepted.created or accepted.event.dispatched_at is None:
        if gateway.reachable:
            # Stored and committed: durable now. Temporal gets it off the request path.
            dispatcher.submit(accepted)
        else:
            # Known outage: try inline so a recovered Temporal is noticed at once.
            try:
                await dispatch(gateway, settings, accepted)
            except TemporalUnavailableError as exc:
                raise temporal_unavailable(
                    "event stored but not dispatched: Temporal is unreachable. "
                    "Herald dispatches it once Temporal is back; retrying with the same "
                    "Idempotency-Key is safe",
                    event_id=accepted.event.id,
                ) from exc
            except DispatchRefusedError:
                pass  # the sweep counts refusals and gives up; GET /v1/events/{id} says why
            else:
                dispatcher.record_dispatched(accepted.event.id)

    result = EventAccepted(
        id=accepted.event.id,
        notifications=[
            NotificationRef(
                id=p.notification.id,
                flow=p.notification.flow_key,
                subscriber_id=p.notification.subscriber_id,
                workflow_id=p.notification.workflow_id,
            )
            for p in accepted.notifications
        ],
    )
    return JSONResponse(
        status_code=status.HTTP_202_ACCEPTED if accepted.created else status.HTTP_200_OK,
        content=result.model_dump(mode="json"),
    )


@router.get(
    f"/{segment('event_id', 'cancel', 'replay')}",
    response_model=EventPublic,
    responses={**NOT_FOUND, **names_a_sibling("cancel", "replay")},
)
def get_event(
    event_id: Annotated[
        str, Path(pattern=NO_NUL, json_schema_extra=other_than("cancel", "replay"))
    ],
    session: ReadSessionDep,
    tenant: TenantDep,
) -> EventPublic:
    detail = q.get_event_detail(session, tenant, event_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"event {event_id!r} not found")
    e = detail.event
    clicks = clicks_for(session, [d.id for _, _, ds in detail.notifications for d in ds])
    failure = failure_of(session, e.id)
    return EventPublic(
        id=e.id,
        type=e.type,
        data=e.data,
        actor=e.actor,
        cancellation_key=e.cancellation_key,
        received_at=e.received_at,
        dispatched_at=e.dispatched_at,
        dispatch_attempts=failure.attempts if failure else 0,
        dispatch_error=failure.reason if failure else None,
        dispatch_given_up_at=failure.given_up_at if failure else None,
        notifications=[
            NotificationPublic(
                id=n.id,
                flow=n.flow_key,
                subscriber_id=n.subscriber_id,
                workflow_id=n.workflow_id,
                status=st.value,
                stop_reason=n.stop_reason,
                acknowledged_at=n.acknowledged_at,
                deliveries=[
                    DeliveryPublic(**d.model_dump(), clicks=clicks.get(d.id, [])) for d in ds
                ],
            )
            for n, st, ds in detail.notifications
        ],
    )


@router.post("/replay", response_model=ReplayResult, responses=REPLAY_UNAVAILABLE)
async def replay_events(
    body: ReplayQuery,
    tenant: TenantDep,
    engine: EngineDep,
    settings: SettingsDep,
    gateway: GatewayDep,
) -> ReplayResult:
    """Run stored events through today's flows again, e.g. a flow added after they happened."""
    return await _replay(body, tenant, engine, settings, gateway, event_id=None)


@router.post(
    "/{event_id}/replay",
    response_model=ReplayResult,
    responses={**NOT_FOUND, **REPLAY_UNAVAILABLE},
)
async def replay_event(
    event_id: Ref,
    tenant: TenantDep,
    engine: EngineDep,
    settings: SettingsDep,
    gateway: GatewayDep,
    body: ReplayCreate | None = None,
) -> ReplayResult:
    """Replay one stored event."""
    if not await run_in_threadpool(_event_exists, engine, tenant, event_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"event {event_id!r} not found")
    query = ReplayQuery.model_validate((body or ReplayCreate()).model_dump())
    return await _replay(query, tenant, engine, settings, gateway, event_id=event_id)


async def _replay(
    body: ReplayQuery,
    tenant: str,
    engine: Engine,
    settings: Settings,
    gateway: TemporalGateway,
    *,
    event_id: str | None,
) -> ReplayResult:
    flow = None
    if body.flow is not None:
        flow = await run_in_threadpool(_flow, engine, tenant, body.flow)
        if flow is None:
            raise field_error(["body", "flow"], f"flow {body.flow!r} does not exist", "not_found")
        if body.type is not None and body.type != flow.event_type:
            raise field_error(
                ["body", "type"],
                f"flow {flow.key!r} handles {flow.event_type!r}, not {body.type!r}",
                "flow_type_mismatch",
            )
    try:
        plan = await run_in_threadpool(
            q.replay_events,
            engine,
            tenant,
            replay_id=body.replay_id or new_id("rpl"),
            event_id=event_id,
            type=body.type if flow is None else flow.event_type,
            since=body.since,
            until=body.until,
            flow=flow,
            dry_run=body.dry_run,
            limit=body.limit or min(1000, limits().max_replay_events),
        )
    except WorkflowInputTooLargeError as exc:
        raise field_error(["body", "flow"], str(exc), "workflow_input_too_large") from exc
    try:
        for accepted in plan.accepted:  # stored first, so a retried call finishes the job
            await dispatch(gateway, settings, accepted)
    except TemporalUnavailableError as exc:
        raise temporal_unavailable(
            "replay stored but not fully started: Temporal is unreachable; "
            "repeat the call with the same replay_id",
            replay_id=plan.replay_id,
        ) from exc
    return ReplayResult(
        replay_id=plan.replay_id,
        dry_run=body.dry_run,
        started=sum(len(a.notifications) for a in plan.accepted),
        items=[
            ReplayItem(event_id=e, flow=f, subscriber_id=sid, workflow_id=wf, already_replayed=done)
            for e, f, sid, wf, done in plan.pairs
        ],
    )


def _flow(engine: Engine, tenant: str, key: str) -> Flow | None:
    with read_scope(engine) as session:
        return get_flow(session, tenant, key)


def _event_exists(engine: Engine, tenant: str, event_id: str) -> bool:
    with read_scope(engine) as session:
        return q.get_event(session, tenant, event_id) is not None
