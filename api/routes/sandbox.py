from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import ReadSessionDep, TenantDep
from core.types import Channel
from store.deliveries import list_sandbox_messages
from store.models import SandboxMessagePublic

router = APIRouter(prefix="/v1/sandbox", tags=["sandbox"])


class SandboxMessages(BaseModel):
    items: list[SandboxMessagePublic]


@router.get("/messages", response_model=SandboxMessages)
def list_messages(
    session: ReadSessionDep,
    tenant: TenantDep,
    channel: Channel | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SandboxMessages:
    """What channels without a configured provider would have sent, newest first."""
    rows = list_sandbox_messages(
        session, tenant, channel=None if channel is None else channel.value, limit=limit
    )
    return SandboxMessages(
        items=[SandboxMessagePublic.model_validate(r, from_attributes=True) for r in rows]
    )
