from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status

from api.deps import ReadSessionDep, SessionDep, SettingsDep, TenantDep, field_error
from api.responses import error
from core.flows import FLOW_KEY_PATTERN, WebhookStep
from core.netguard import AddressPolicy, static_url_refusal
from store import flows as q
from store.models import FlowCreate, FlowPublic

router = APIRouter(prefix="/v1/flows", tags=["flows"])
FlowKey = Annotated[str, Path(pattern=FLOW_KEY_PATTERN)]
NOT_FOUND = error(404, "No flow with this key")


@router.put("/{key}", response_model=FlowPublic)
def put_flow(
    key: FlowKey, body: FlowCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> FlowPublic:
    """Create or replace. Running notifications keep the version they started with."""
    _check_webhook_urls(body, settings.webhook_policy)
    row = q.put_flow(session, tenant, key, body.model_dump(mode="json"))
    return FlowPublic.model_validate(row, from_attributes=True)


def _check_webhook_urls(body: FlowCreate, policy: AddressPolicy) -> None:
    """A literal webhook URL the SSRF guard would refuse at every send is refused now."""
    for index, step in enumerate(body.steps):
        if not isinstance(step, WebhookStep) or step.url is None:
            continue
        url = step.url.strip()
        if any(marker in url for marker in ("{{", "{%", "{#")):
            continue  # rendered per event: checked at each send
        refusal = static_url_refusal(url, policy)
        if refusal is not None:
            raise field_error(
                ["body", "steps", index, "webhook", "url"], refusal, "blocked_address"
            )


@router.get("", response_model=list[FlowPublic])
def list_flows(session: ReadSessionDep, tenant: TenantDep) -> list[FlowPublic]:
    return [
        FlowPublic.model_validate(r, from_attributes=True) for r in q.list_flows(session, tenant)
    ]


@router.get("/{key}", response_model=FlowPublic, responses=NOT_FOUND)
def get_flow(key: FlowKey, session: ReadSessionDep, tenant: TenantDep) -> FlowPublic:
    row = q.get_flow(session, tenant, key)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"flow {key!r} not found")
    return FlowPublic.model_validate(row, from_attributes=True)


@router.delete("/{key}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
def delete_flow(key: FlowKey, session: SessionDep, tenant: TenantDep) -> Response:
    if not q.delete_flow(session, tenant, key):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"flow {key!r} not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
