"""One trace from the API request to the provider's HTTP call, exported over OTLP/HTTP."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment

from core.telemetry import Telemetry, configure_logging, log_ids, traces_url
from core.temporal import connect
from tests.conftest import Herald, make_settings, open_api, start_workers, unique
from tests.fakes.provider import FakeProvider


@dataclass
class Span:
    name: str
    trace_id: str
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)


class Collector:
    """An OTLP/HTTP traces receiver on loopback, keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                collector.receive(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def receive(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    attrs = {a.key: a.value.string_value or a.value.int_value for a in s.attributes}
                    self.spans.append(
                        Span(s.name, s.trace_id.hex(), resource["service.name"], attrs)
                    )


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    thread = threading.Thread(target=c.server.serve_forever, daemon=True)
    thread.start()
    yield c
    c.server.shutdown()
    c.server.server_close()


def test_traces_url_accepts_a_base_or_the_full_path() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://127.0.0.1:4318/v1/traces/") == "http://127.0.0.1:4318/v1/traces"


def test_without_an_endpoint_nothing_is_instrumented(database_url: str) -> None:
    settings, _, _ = make_settings(database_url)
    telemetry = Telemetry.start(settings, "herald-test")
    assert not telemetry.enabled
    assert telemetry.interceptors() == []


async def test_one_trace_from_the_request_to_the_provider_call(
    temporal_env: WorkflowEnvironment,
    engine: Engine,
    database_url: str,
    fresh_provider: FakeProvider,
    collector: Collector,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    settings, key, tenant = make_settings(
        database_url,
        temporal_address=temporal_env.client.service_client.config.target_host,
        otel_endpoint=collector.url,
        log_format="json",
        **fresh_provider.settings_overrides(tmp_path),
    )
    configure_logging(settings)
    worker_telemetry = Telemetry.start(settings, "herald-worker")
    try:
        async with AsyncExitStack() as stack:
            # As worker.py does: the tracing interceptor rides on the client.
            client = await connect(settings, worker_telemetry.interceptors())
            await start_workers(stack, client, settings, engine, ["workflows", "email"])
            # The API connects by itself, as in production, through its own telemetry.
            app, http = await open_api(stack, settings, key, None)
            herald = Herald(http, settings, client, engine, tenant, key, stack, app)
            sub = unique("u")
            await herald.put_subscriber(sub, email=f"{sub}@example.com")
            steps = [{"channel": "email", "subject": "Hi", "text": "Hello"}]
            await herald.put_flow("welcome", event_type="user.signup", steps=steps)
            event = await herald.wait_event(
                (await herald.publish(type="user.signup", to=[sub]))["id"]
            )
            (delivery,) = event["notifications"][0]["deliveries"]
            assert delivery["status"] == "sent"
    finally:
        worker_telemetry.shutdown()  # flushes the worker's spans; the API flushed at shutdown
        logging.getLogger().handlers[:] = [
            h for h in logging.getLogger().handlers if h.get_name() != "herald"
        ]

    (request,) = [s for s in collector.spans if s.name == "POST /v1/events"]
    in_trace = [s for s in collector.spans if s.trace_id == request.trace_id]
    names = {s.name for s in in_trace}
    assert request.service == "herald-api"
    assert {
        "StartWorkflow:NotificationWorkflow",
        "RunWorkflow:NotificationWorkflow",
        "StartActivity:deliver",
        "RunActivity:deliver",
    } <= names, names
    # SendGrid's SDK posts through urllib: that call is in the same trace.
    (provider_call,) = [
        s
        for s in in_trace
        # The semantic conventions renamed http.url to url.full; either may be set.
        if str(s.attributes.get("url.full") or s.attributes.get("http.url")).startswith(
            fresh_provider.url
        )
    ]
    assert provider_call.service == "herald-worker"

    # The worker's log line for the send carries the ids and the trace, as JSON fields.
    lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    (sent,) = [line for line in lines if line["message"].startswith("sendgrid accepted")]
    assert sent["delivery_id"] == delivery["id"]
    assert sent["notification_id"] == event["notifications"][0]["id"]
    assert (sent["tenant_id"], sent["event_id"]) == (tenant, event["id"])
    assert sent["trace_id"] == request.trace_id
    assert sent["level"] == "INFO"


def test_json_lines_carry_the_ids_and_the_span(
    database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    settings, _, _ = make_settings(database_url, log_format="json")
    configure_logging(settings)
    try:
        tracer = TracerProvider().get_tracer("t")
        with (
            log_ids(tenant_id="acme", event_id="evt_1"),
            log_ids(delivery_id="dlv_1"),
            tracer.start_as_current_span("x") as span,
        ):
            logging.getLogger("herald.test").warning("hello %s", "there")
    finally:
        logging.getLogger().handlers[:] = [
            h for h in logging.getLogger().handlers if h.get_name() != "herald"
        ]
    (line,) = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    assert line["message"] == "hello there"
    assert (line["tenant_id"], line["event_id"], line["delivery_id"]) == ("acme", "evt_1", "dlv_1")
    assert line["name"] == "herald.test"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
