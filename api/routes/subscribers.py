from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from sqlmodel import Session

from api.deps import EngineDep, GatewayDep, ReadSessionDep, SessionDep, TenantDep, bearer
from api.methods import names_a_sibling, other_than, segment
from api.responses import error
from dispatching.erasure import stop_workflows
from store import subscribers as q
from store import topics
from store.erasure import ErasurePublic, erase_subscriber
from store.models import (
    RESERVED_SUBSCRIBER_IDS,
    SUBSCRIBER_ID_PATTERN,
    PreferencePublic,
    PreferenceUpdate,
    SubscriberCreate,
    SubscriberPublic,
)
from store.topics import BulkImportResult, SubscriberBulkIn

router = APIRouter(prefix="/v1/subscribers", tags=["subscribers"])
# Never "bulk": /v1/subscribers/bulk is the bulk import, not a subscriber.
SubscriberId = Annotated[
    str,
    Path(
        pattern=SUBSCRIBER_ID_PATTERN,
        description="Your user id",
        json_schema_extra=other_than(*RESERVED_SUBSCRIBER_IDS),
    ),
]
ONE = segment("subscriber_id", *RESERVED_SUBSCRIBER_IDS)
NOT_A_SUBSCRIBER = names_a_sibling(*RESERVED_SUBSCRIBER_IDS)
# The caller's key, for the erasure's audit record (TenantDep has already checked it).
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
NOT_FOUND = error(404, "No subscriber with this id")


@router.post("/bulk", response_model=BulkImportResult)
def bulk_import(body: SubscriberBulkIn, session: SessionDep, tenant: TenantDep) -> BulkImportResult:
    """Upsert up to 10,000 subscribers in one transaction, each row as PUT would.

    Each row is validated alone: invalid ones are listed by index and field, the rest saved.
    """
    valid, invalid = topics.parse_bulk(body.subscribers)
    created, updated = topics.bulk_upsert_subscribers(session, tenant, valid)
    return BulkImportResult(created=created, updated=updated, invalid=invalid)


@router.put(f"/{ONE}", response_model=SubscriberPublic, responses=NOT_A_SUBSCRIBER)
def put_subscriber(
    subscriber_id: SubscriberId, body: SubscriberCreate, session: SessionDep, tenant: TenantDep
) -> SubscriberPublic:
    """Create or update. Fields you omit keep their stored value; send null to clear one."""
    row = q.upsert_subscriber(session, tenant, subscriber_id, body.to_row_values())
    return SubscriberPublic.model_validate(row, from_attributes=True)


@router.get(f"/{ONE}", response_model=SubscriberPublic, responses={**NOT_FOUND, **NOT_A_SUBSCRIBER})
def get_subscriber(
    subscriber_id: SubscriberId, session: ReadSessionDep, tenant: TenantDep
) -> SubscriberPublic:
    row = q.get_subscriber(session, tenant, subscriber_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"subscriber {subscriber_id!r} not found")
    return SubscriberPublic.model_validate(row, from_attributes=True)


@router.delete(
    f"/{ONE}",
    response_model=ErasurePublic,
    summary="Erase a subscriber (GDPR)",
    responses={
        **error(404, "Herald holds nothing for this id (unknown or erased)"),
        **NOT_A_SUBSCRIBER,
    },
)
async def erase(
    subscriber_id: SubscriberId,
    tenant: TenantDep,
    engine: EngineDep,
    gateway: GatewayDep,
    bearer: BearerDep,
) -> ErasurePublic:
    """Erase the subscriber (GDPR): personal data goes, running notifications stop.

    Deleted in one transaction: the subscriber, preferences, topic memberships, their
    notifications and deliveries with timelines, tracked links, sandbox copies and
    suppressions, and their id in stored events. Analytics counts stay (they name no one),
    and an audit record of the erasure is kept. Running workflows are terminated after the
    commit. Repeating the call answers 404.
    """
    key = None if bearer is None else bearer.credentials
    erased = await run_in_threadpool(erase_subscriber, engine, tenant, subscriber_id, key)
    if erased is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"subscriber {subscriber_id!r} not found")
    stopped = await stop_workflows(gateway, tenant, subscriber_id, erased.workflow_ids)
    return ErasurePublic(
        id=erased.record.id,
        erased_at=erased.record.erased_at,
        deleted=erased.record.deleted,
        workflows_stopped=stopped.stopped,
        workflows_not_reached=stopped.not_reached,
    )


@router.put("/{subscriber_id}/preferences", response_model=PreferencePublic, responses=NOT_FOUND)
def put_preferences(
    subscriber_id: SubscriberId, body: PreferenceUpdate, session: SessionDep, tenant: TenantDep
) -> PreferencePublic:
    """Replace the subscriber's preferences. Flow beats category beats channel; unset allows."""
    _require(session, tenant, subscriber_id)
    row = q.put_preferences(session, tenant, subscriber_id, body.model_dump(mode="json"))
    return PreferencePublic.model_validate(row, from_attributes=True)


@router.get("/{subscriber_id}/preferences", response_model=PreferencePublic, responses=NOT_FOUND)
def get_preferences(
    subscriber_id: SubscriberId, session: ReadSessionDep, tenant: TenantDep
) -> PreferencePublic:
    _require(session, tenant, subscriber_id)
    row = q.get_preferences(session, tenant, subscriber_id)
    if row is None:
        return PreferencePublic(subscriber_id=subscriber_id)
    return PreferencePublic.model_validate(row, from_attributes=True)


def _require(session: Session, tenant: str, subscriber_id: str) -> None:
    if q.get_subscriber(session, tenant, subscriber_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"subscriber {subscriber_id!r} not found")
