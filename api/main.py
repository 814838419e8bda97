"""The FastAPI app factory: ``uvicorn --factory api.main:create_app``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from temporalio.client import Client

from api.deps import EngineDep, GatewayDep
from api.recorder import ObservationRecorder
from api.routes import (
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
)
from core.settings import Settings, get_settings
from core.telemetry import Telemetry, configure_logging
from dispatching.outbox import Dispatcher
from dispatching.temporal import TemporalGateway, TemporalUnavailableError
from ingest.app import asyncapi_schema
from store.db import init_db, make_engine, session_scope
from store.tenants import ensure_api_keys

log = logging.getLogger("herald.api")


def create_app(settings: Settings | None = None, client: Client | None = None) -> FastAPI:
    settings = settings or get_settings()
    telemetry = Telemetry.start(settings, "herald-api")
    if settings.log_format == "json":  # uvicorn leaves the root logger to the app
        configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        await run_in_threadpool(init_db, engine)
        with session_scope(engine) as session:
            ensure_api_keys(session, settings.api_key_map())
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
        app.state.recorder = recorder
        app.state.key_cache = {}
        try:
            yield
        finally:
            await recorder.stop()  # queued hits are written before the engine goes
            await dispatcher.stop()
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
    ):
        app.include_router(module.router)
    telemetry.instrument_app(app)

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> JSONResponse:
        """The broker side of the API, beside /openapi.json: what ``python -m ingest`` consumes."""
        return JSONResponse(asyncapi_schema(settings))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus scrapes this, unauthenticated like /healthz: keep it internal."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"])
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


def _database_ok(engine: object) -> bool:
    try:
        with session_scope(engine) as session:  # type: ignore[arg-type]
            session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        return True
    except Exception:
        log.exception("database health check failed")
        return False
