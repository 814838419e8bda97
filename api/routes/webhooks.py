"""The tenant's webhook signing secret: read it, rotate it.

After a rotation, deliveries carry two signatures (new and old, space-separated in
``webhook-signature``) until ``previous_expires_at`` (HERALD_WEBHOOK_SECRET_GRACE), so
receivers can switch to the new secret at any moment within it.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import SessionDep, SettingsDep, TenantDep
from store import webhook_secrets as q

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecretOut(BaseModel):
    secret: str = Field(description="whsec_<base64>: verify deliveries with this")
    created_at: datetime
    previous_expires_at: datetime | None = Field(
        description="Until then deliveries are also signed with the previous secret"
    )

    @classmethod
    def of(cls, row: q.WebhookSecret) -> WebhookSecretOut:
        v = q.view(row)
        return cls(
            secret=v.secret, created_at=v.created_at, previous_expires_at=v.previous_expires_at
        )


def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"  # a secret has no business in a cache


@router.get("/secret", response_model=WebhookSecretOut)
def get_secret(session: SessionDep, tenant: TenantDep, response: Response) -> WebhookSecretOut:
    """The current signing secret (made on first use)."""
    _no_store(response)
    return WebhookSecretOut.of(q.ensure_secret(session, tenant))


@router.post("/secret/rotate", response_model=WebhookSecretOut)
def rotate_secret(
    session: SessionDep, tenant: TenantDep, settings: SettingsDep, response: Response
) -> WebhookSecretOut:
    """A new signing secret; the one it replaces keeps signing for the grace period.

    Rotating again within the grace ends the older secret's grace at once.
    """
    _no_store(response)
    return WebhookSecretOut.of(q.rotate(session, tenant, settings.webhook_secret_grace))
