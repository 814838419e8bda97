"""Request-scoped dependencies: settings, database session, tenant from the bearer key."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from api.ratelimit import TenantRateLimiter, retry_after_seconds
from core.settings import Settings
from dispatching.outbox import Dispatcher
from dispatching.temporal import TemporalGateway
from store.api_keys import KEY_CACHE_SECONDS, active_key, hash_key, touch_key
from store.db import read_scope, session_scope
from store.group_commit import GroupCommit
from store.models import NO_NUL

log = logging.getLogger(__name__)

# One scheme for every tenant route (the admin API has its own, HeraldAdminKey).
bearer = HTTPBearer(auto_error=False, scheme_name="HeraldApiKey", description="Herald API key")
# A key's last_used_at is written at most this often (per process), not on every request.
LAST_USED_EVERY = timedelta(seconds=60)


@dataclass
class _Checked:
    key_id: str
    tenant: str
    expires: float
    last_used: float | None  # clock time of the last_used_at this process knows of

    def fresh(self, now: float) -> bool:
        return self.expires > now

    def touch_due(self, now: float) -> bool:
        """last_used_at is written at most every LAST_USED_EVERY, per process."""
        return self.last_used is None or now - self.last_used >= LAST_USED_EVERY.total_seconds()


class KeyAuthenticator:
    """Bearer key to tenant, with a short cache; the admin routes evict revoked keys."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock  # wall-clock seconds; injectable so tests step time
        self._cache: dict[str, _Checked] = {}  # by key hash
        self._lock = threading.Lock()

    def cached_tenant(self, key: str) -> str | None:
        """The tenant when the cache alone answers: no lookup and no last-used write due.

        It runs on the event loop: a thread-pool hop per request cost the API-alone burst
        about 8 ms at p99 (BENCHMARKS.md).
        """
        checked = self._cache.get(hash_key(key))
        now = self.clock()
        if checked is None or not checked.fresh(now) or checked.touch_due(now):
            return None
        return checked.tenant

    def tenant_for(self, key: str) -> str | None:
        digest = hash_key(key)
        now = self.clock()
        checked = self._cache.get(digest)
        if checked is None or not checked.fresh(now):
            with read_scope(self.engine) as session:
                found = active_key(session, key)
            with self._lock:
                if found is None:
                    self._cache.pop(digest, None)
                    return None
                used = found.last_used_at.timestamp() if found.last_used_at else None
                checked = _Checked(found.id, found.tenant, now + KEY_CACHE_SECONDS, used)
                self._cache[digest] = checked
        self._touch(checked, now)
        return checked.tenant

    def forget(self, key_id: str) -> None:
        """Drop a revoked key from the cache so this process refuses it at once."""
        with self._lock:
            for digest in [d for d, c in self._cache.items() if c.key_id == key_id]:
                self._cache.pop(digest, None)

    def _touch(self, checked: _Checked, now: float) -> None:
        with self._lock:
            if not checked.touch_due(now):
                return
            checked.last_used = now
        try:
            with session_scope(self.engine) as session:
                touch_key(
                    session, checked.key_id, datetime.fromtimestamp(now, UTC), LAST_USED_EVERY
                )
        except (SQLAlchemyError, TimeoutError):  # bookkeeping: never fail the request over it
            log.warning("could not record the use of API key %s", checked.key_id, exc_info=True)


# These only read app.state, so they are ``async``: FastAPI runs a plain ``def`` dependency
# in its thread pool, and POST /v1/events took five such hops before its own work.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_gateway(request: Request) -> TemporalGateway:
    return request.app.state.temporal


async def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


async def get_commits(request: Request) -> GroupCommit:
    return request.app.state.commits


def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    with session_scope(engine) as session:
        yield session


def get_read_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    with read_scope(engine) as session:
        yield session


async def get_tenant(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The caller's tenant; every authenticated route also takes a token of its rate limit."""
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise _unauthorized("missing bearer API key")
    auth: KeyAuthenticator = request.app.state.key_auth
    tenant = auth.cached_tenant(creds.credentials) or await run_in_threadpool(
        auth.tenant_for, creds.credentials
    )
    if tenant is None:
        raise _unauthorized("invalid API key")
    limiter: TenantRateLimiter | None = request.app.state.rate_limiter
    if limiter is not None:
        wait = limiter.acquire(tenant)
        if wait > 0:
            raise _rate_limited(limiter, retry_after_seconds(wait))
    return tenant


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def _rate_limited(limiter: TenantRateLimiter, retry_after: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail={
            "message": "tenant rate limit exceeded",
            "limit_per_second": limiter.rate,
            "burst": limiter.burst,
            "retry_after_seconds": retry_after,
        },
        headers={"Retry-After": str(retry_after)},
    )


# An id in the path or a filter in the query: it reaches SQL, where U+0000 cannot go.
Ref = Annotated[str, Path(pattern=NO_NUL)]
TextQuery = Annotated[str | None, Query(pattern=NO_NUL)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
TenantDep = Annotated[str, Depends(get_tenant)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
GatewayDep = Annotated[TemporalGateway, Depends(get_gateway)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
CommitsDep = Annotated[GroupCommit, Depends(get_commits)]


def field_error(loc: list[str | int], msg: str, type_: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so clients parse one format."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": loc, "msg": msg, "type": type_}],
    )


def temporal_unavailable(message: str, **ids: str) -> HTTPException:
    """503 for work that is stored but not yet handed to Temporal; ``ids`` say what to retry."""
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail={"message": message, **ids})
