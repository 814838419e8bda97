"""Request-scoped dependencies: settings, database session, tenant from the bearer key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session

from core.settings import Settings
from dispatching.outbox import Dispatcher
from dispatching.temporal import TemporalGateway
from store.db import read_scope, session_scope
from store.tenants import hash_key, tenant_for_key

_bearer = HTTPBearer(auto_error=False, description="Herald API key")
_KEY_CACHE_TTL = 60.0


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_gateway(request: Request) -> TemporalGateway:
    return request.app.state.temporal


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    with session_scope(engine) as session:
        yield session


def get_read_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    with read_scope(engine) as session:
        yield session


def get_tenant(
    request: Request,
    engine: Annotated[Engine, Depends(get_engine)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise _unauthorized("missing bearer API key")
    cache: dict[str, tuple[str, float]] = request.app.state.key_cache
    digest = hash_key(creds.credentials)
    hit = cache.get(digest)
    now = time.monotonic()
    if hit is not None and hit[1] > now:
        return hit[0]
    with read_scope(engine) as session:
        tenant = tenant_for_key(session, creds.credentials)
    if tenant is None:
        raise _unauthorized("invalid API key")
    cache[digest] = (tenant, now + _KEY_CACHE_TTL)
    return tenant


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
TenantDep = Annotated[str, Depends(get_tenant)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
GatewayDep = Annotated[TemporalGateway, Depends(get_gateway)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


def field_error(loc: list[str | int], msg: str, type_: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": loc, "msg": msg, "type": type_}],
    )


def temporal_unavailable(message: str, **ids: str) -> HTTPException:
    """503 for work that is stored but not yet handed to Temporal; ``ids`` say what to retry."""
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail={"message": message, **ids})
