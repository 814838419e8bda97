from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel

from api.deps import ReadSessionDep, SettingsDep, TenantDep
from api.responses import error
from core.deployment import sandbox_allowed
from core.types import Channel
from store.deliveries import list_sandbox_messages
from store.models import SandboxMessagePublic


def _sandbox_on(settings: SettingsDep) -> None:
    """Off in production (nothing goes to the sandbox there), unless HERALD_SANDBOX=true."""
    if not sandbox_allowed(settings):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            "the sandbox is off in production (HERALD_SANDBOX=true turns it on)",
        )


router = APIRouter(
    prefix="/v1/sandbox",
    tags=["sandbox"],
    dependencies=[Depends(_sandbox_on)],
    responses=error(404, "The sandbox is off (production without HERALD_SANDBOX=true)"),
)


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
