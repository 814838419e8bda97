"""Traces over OTLP and JSON logs, both opt-in: with no endpoint, no span is ever made.

One trace runs from the API request through the outbox, the workflow and its activities
to the provider's HTTP call: FastAPI's instrumentation opens it, Temporal's
``TracingInterceptor`` carries it in workflow and activity headers, and the httpx,
requests and urllib instrumentations cover the webhook, Twilio/FCM and SendGrid calls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.urllib import URLLibInstrumentor
from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pythonjsonlogger.json import JsonFormatter
from temporalio.client import Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor

from core.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Ids a log line may carry; set with ``log_ids`` where they become known.
LOG_ID_FIELDS = ("tenant_id", "event_id", "notification_id", "delivery_id", "broadcast_id")

_HANDLER_NAME = "herald"
_log_ids: ContextVar[Mapping[str, str] | None] = ContextVar("herald_log_ids", default=None)


@contextmanager
def log_ids(**ids: str | None) -> Iterator[None]:
    """Every log line inside carries these ids (as JSON fields with HERALD_LOG_FORMAT=json)."""
    token = _log_ids.set({**(_log_ids.get() or {}), **{k: v for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _log_ids.reset(token)


class ContextFilter(logging.Filter):
    """Adds the current ids and the OpenTelemetry trace and span ids to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_log_ids.get() or {}).items():
            setattr(record, key, value)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        return True


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    """The root handler of a Herald process: text for people, JSON for a log pipeline."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(TEXT_FORMAT, rename_fields={"asctime": "time", "levelname": "level"})
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # Replace only our own handler: a host's (pytest's capture, say) stays.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def traces_url(endpoint: str) -> str:
    """OTLP/HTTP's traces path under a collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


class Telemetry:
    """A process's tracer provider and instrumentations; inert without an endpoint."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self._instrumentors: list[Any] = []

    @classmethod
    def start(cls, settings: Settings, service: str) -> Telemetry:
        if not settings.otel_endpoint:
            return cls(None)
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings.otel_endpoint)))
        )
        telemetry = cls(provider)
        # urllib3: SendGrid's pooled transport (channels.sendgrid_transport).
        instrumentors = (
            HTTPXClientInstrumentor(),
            RequestsInstrumentor(),
            URLLibInstrumentor(),
            URLLib3Instrumentor(),
        )
        for instrumentor in instrumentors:
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=provider)
                telemetry._instrumentors.append(instrumentor)
        return telemetry

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def interceptors(self) -> list[Interceptor]:
        """For ``Client.connect``: workers built on the client trace workflows and activities."""
        if self.provider is None:
            return []
        return [TracingInterceptor(self.provider.get_tracer("herald.temporal"))]

    def instrument_app(self, app: Any) -> None:
        if self.provider is not None:
            FastAPIInstrumentor.instrument_app(
                app, tracer_provider=self.provider, excluded_urls="metrics,healthz"
            )

    def shutdown(self) -> None:
        """Flush what is buffered (a process about to exit) and undo the instrumentations."""
        for instrumentor in self._instrumentors:
            instrumentor.uninstrument()
        self._instrumentors.clear()
        if self.provider is not None:
            self.provider.shutdown()


def current_context() -> otel_context.Context:
    """The trace context to carry across a queue, so the work done later joins the trace."""
    return otel_context.get_current()


@contextmanager
def attached(ctx: otel_context.Context | None) -> Iterator[None]:
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)
