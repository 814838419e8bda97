"""Topics: named lists of subscribers that broadcasts are sent to."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status

from api.deps import ReadSessionDep, SessionDep, TenantDep
from api.responses import error
from core.audience import TOPIC_KEY_PATTERN
from store import topics as q
from store.models import SUBSCRIBER_ID_PATTERN
from store.topics import TopicCreate, TopicMembersAdded, TopicMembersIn, TopicPublic

router = APIRouter(prefix="/v1/topics", tags=["topics"])
TopicKey = Annotated[str, Path(pattern=TOPIC_KEY_PATTERN)]
SubscriberId = Annotated[str, Path(pattern=SUBSCRIBER_ID_PATTERN)]
NOT_FOUND = error(404, "No topic with this key")


@router.put("/{key}", response_model=TopicPublic)
def put_topic(
    key: TopicKey, body: TopicCreate, session: SessionDep, tenant: TenantDep
) -> TopicPublic:
    """Create or rename; its members stay."""
    return q.put_topic(session, tenant, key, body.name)


@router.get("", response_model=list[TopicPublic])
def list_topics(session: ReadSessionDep, tenant: TenantDep) -> list[TopicPublic]:
    return q.list_topics(session, tenant)


@router.get("/{key}", response_model=TopicPublic, responses=NOT_FOUND)
def get_topic(key: TopicKey, session: ReadSessionDep, tenant: TenantDep) -> TopicPublic:
    found = q.get_topic(session, tenant, key)
    if found is None:
        raise _not_found(key)
    return found


@router.post("/{key}/subscribers", response_model=TopicMembersAdded, responses=NOT_FOUND)
def add_subscribers(
    key: TopicKey, body: TopicMembersIn, session: SessionDep, tenant: TenantDep
) -> TopicMembersAdded:
    """Add up to 10,000 subscribers; adding a member again changes nothing.

    If any id is not a subscriber, nothing is added and each such id is named by its index.
    """
    if not q.topic_exists(session, tenant, key):
        raise _not_found(key)
    unknown = q.unknown_subscribers(session, tenant, body.subscribers)
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[
                {
                    "loc": ["body", "subscribers", i],
                    "msg": f"subscriber {body.subscribers[i]!r} not found",
                    "type": "not_found",
                }
                for i in unknown
            ],
        )
    added = q.add_members(session, tenant, key, body.subscribers)
    return TopicMembersAdded(added=added, subscriber_count=q.member_count(session, tenant, key))


@router.delete(
    "/{key}/subscribers/{subscriber_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error(404, "The subscriber is not a member of the topic"),
)
def remove_subscriber(
    key: TopicKey, subscriber_id: SubscriberId, session: SessionDep, tenant: TenantDep
) -> Response:
    if not q.remove_member(session, tenant, key, subscriber_id):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"subscriber {subscriber_id!r} is not in topic {key!r}"
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _not_found(key: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"topic {key!r} not found")
