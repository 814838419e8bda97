"""The FastAPI app factory: ``uvicorn --factory api.main:create_app``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client

from api import methods
from api.deps import EngineDep, GatewayDep, KeyAuthenticator, get_tenant
from api.limits import BodyLimit
from api.ratelimit import TenantRateLimiter
from api.recorder import ObservationRecorder
from api.responses import declare_common
from api.routes import (
    admin,
    analytics,
    broadcasts,
    dashboard,
    deliveries,
    events,
    flows,
    notifications,
    providers,
    sandbox,
    schedules,
    subscribers,
    topics,
    tracking,
    webhooks,
)
from core.heap import freeze_startup_heap
from core.limits import configure as configure_limits
from core.metrics import DEAD_LETTERS
from core.settings import Settings, get_settings
from core.telemetry import Telemetry, configure_logging
from core.types import Channel
from core.webhook_settings import first_secret_tenants
from dispatching.outbox import Dispatcher
from dispatching.temporal import TemporalGateway, TemporalUnavailableError
from ingest.app import asyncapi_schema
from store.api_keys import seed_api_keys
from store.db import make_engine, read_scope, session_scope
from store.deliveries import dead_letters_waiting
from store.group_commit import GroupCommit
from store.models import utcnow
from store.schema import require_current
from store.webhook_secrets import seed_secrets

log = logging.getLogger("herald.api")
Reach = Literal["ok", "unreachable"]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Reach
    temporal: Reach


def create_app(settings: Settings | None = None, client: Client | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_limits(settings)  # the request models' validators read them
    telemetry = Telemetry.start(settings, "herald-api")
    if settings.log_format == "json":  # uvicorn leaves the root logger to the app
        configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        await run_in_threadpool(require_current, engine)  # `herald migrate` makes it
        with session_scope(engine) as session:
            seed_api_keys(
                session,
                settings.api_key_map(),
                revoke_unlisted=settings.api_keys_revoke_unlisted,
            )
            seed_secrets(
                session, first_secret_tenants(settings), settings.webhook_secret.get_secret_value()
            )
        gateway = TemporalGateway(settings, client, telemetry.interceptors())
        with contextlib.suppress(TemporalUnavailableError):
            await gateway.client()  # learn now whether Temporal is there; 503s follow if not
        dispatcher = Dispatcher(engine, gateway, settings)
        await dispatcher.start()
        recorder = ObservationRecorder(engine, gateway)  # pixel and click hits
        await recorder.start()
        app.state.settings = settings
        app.state.engine = engine
        app.state.temporal = gateway
        app.state.dispatcher = dispatcher
        app.state.commits = GroupCommit(engine)  # concurrent POST /v1/events share a commit
        app.state.recorder = recorder
        # Key lookups get a pool of their own: routes open their session before they
        # authenticate, so on a shared pool, once the key cache expired, as many requests as
        # the pool holds each held a connection and waited for another, until its timeout.
        auth_engine = make_engine(settings.database_url, pool=(1, 2))
        app.state.key_auth = KeyAuthenticator(auth_engine)
        app.state.rate_limiter = TenantRateLimiter.from_settings(settings)
        app.state.frozen_objects = freeze_startup_heap(settings.gc_freeze)
        try:
            yield
        finally:
            await recorder.stop()  # queued hits are written before the engine goes
            await dispatcher.stop()
            auth_engine.dispose()
            engine.dispose()
            telemetry.shutdown()  # the last spans are exported before the process goes

    app = FastAPI(
        title="Herald",
        version="0.1.0",
        description="Publish business events; Herald delivers notifications durably on Temporal. "
        "Events can also come from a message broker: see the AsyncAPI document at "
        "[/asyncapi.json](/asyncapi.json).",
        lifespan=lifespan,
    )
    for module in (
        subscribers,
        flows,
        notifications,
        events,
        deliveries,
        sandbox,
        providers,
        tracking,
        analytics,
        dashboard,
        broadcasts,
        topics,
        schedules,
        admin,
        webhooks,
    ):
        declare_common(module.router, get_tenant)
        app.include_router(module.router)
    methods.install(app)
    app.add_middleware(BodyLimit, limits=settings)
    telemetry.instrument_app(app)

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> JSONResponse:
        """The broker side of the API, beside /openapi.json: what ``python -m ingest`` consumes."""
        return JSONResponse(asyncapi_schema(settings))

    @app.get("/metrics", include_in_schema=False)
    async def metrics(engine: EngineDep) -> Response:
        """Prometheus scrapes this, unauthenticated like /healthz: keep it internal."""
        await run_in_threadpool(_count_dead_letters, engine, settings)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/healthz",
        tags=["health"],
        response_model=Health,
        responses={503: {"model": Health, "description": "The database or Temporal is down"}},
    )
    async def healthz(engine: EngineDep, gateway: GatewayDep) -> JSONResponse:
        database = await run_in_threadpool(_database_ok, engine)
        temporal = await gateway.healthy()
        ok = database and temporal
        return JSONResponse(
            status_code=200 if ok else 503,
            content={
                "status": "ok" if ok else "degraded",
                "database": "ok" if database else "unreachable",
                "temporal": "ok" if temporal else "unreachable",
            },
        )

    return app


def _count_dead_letters(engine: Engine, settings: Settings) -> None:
    """A gauge read from the database at scrape time: it is state, not a stream of events."""
    with read_scope(engine) as session:
        waiting = dead_letters_waiting(session, utcnow() - settings.dead_letter_retention)
    for channel in Channel:
        DEAD_LETTERS.labels(channel.value).set(
            waiting.get(channel.value, 0) if settings.dead_letter_retention else 0
        )


def _database_ok(engine: object) -> bool:
    try:
        with session_scope(engine) as session:  # type: ignore[arg-type]
            session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        return True
    except Exception:
        log.exception("database health check failed")
        return False
