"""Admin API: manage every tenant's API keys with ``HERALD_ADMIN_KEY``.

With no admin key configured the routes answer 404, as if absent: nothing to probe.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import KeyAuthenticator, ReadSessionDep, SessionDep, SettingsDep
from api.responses import error
from store import api_keys as q
from store.api_keys import TENANT_PATTERN, KeyCreate, KeyCreated, KeyPublic
from store.models import NO_NUL

_admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="HeraldAdminKey", description="HERALD_ADMIN_KEY"
)


def require_admin(
    settings: SettingsDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    if settings.admin_key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Not Found")
    expected = settings.admin_key.get_secret_value().encode()
    given = (creds.credentials if creds and creds.scheme.lower() == "bearer" else "").encode()
    if not hmac.compare_digest(given, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="invalid admin key",
            headers={"WWW-Authenticate": "Bearer"},
        )


router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={
        **error(401, "Missing or wrong admin key"),
        **error(404, "The admin API is off (no HERALD_ADMIN_KEY)"),
    },
)
KeyId = Annotated[str, Path(max_length=32, pattern=NO_NUL)]


@router.post("/keys", response_model=KeyCreated, status_code=status.HTTP_201_CREATED)
def create_key(body: KeyCreate, session: SessionDep) -> KeyCreated:
    """A new key for the tenant (created if new). ``key`` is shown in this answer only."""
    return q.create_key(session, body)


@router.get("/keys", response_model=list[KeyPublic])
def list_keys(
    session: ReadSessionDep,
    tenant: Annotated[str | None, Query(pattern=TENANT_PATTERN)] = None,
    include_revoked: bool = False,
) -> list[KeyPublic]:
    """Keys by tenant, oldest first; never their plaintext or hash."""
    return q.list_keys(session, tenant, include_revoked)


@router.delete(
    "/keys/{key_id}",
    response_model=KeyPublic,
    responses=error(404, "No API key with this id (or the admin API is off)"),
)
def revoke_key(key_id: KeyId, session: SessionDep, request: Request) -> KeyPublic:
    """Revoke for good: this process refuses the key at once, other API processes within
    ``KEY_CACHE_SECONDS`` (10 s). Revoking a revoked key changes nothing."""
    revoked = q.revoke_key(session, key_id)
    if revoked is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"API key {key_id!r} not found")
    session.commit()  # before the cache forgets it, so no request re-reads it as active
    auth: KeyAuthenticator = request.app.state.key_auth
    auth.forget(key_id)
    return revoked
