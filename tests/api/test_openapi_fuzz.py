"""Schemathesis over the OpenAPI document, every check on (``schemathesis run --checks all``).

Client generators and API consumers build on the document, so each route must declare
every status it answers, refuse what its schema refuses and take what it allows. The run
is bounded and seeded (the same cases every time), in-process over ASGI, authenticated as
the test's tenant and as the admin. No workers serve the tenant's queues: workflows the
API starts wait, unsent, and are terminated at the end; no name is looked up and nothing
is connected to beyond loopback (a flow's webhook URL is checked against DNS when saved).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from schemathesis.core.failures import Failure
from schemathesis.engine import events
from schemathesis.engine import from_schema as engine_for
from schemathesis.openapi.checks import RejectedPositiveData
from temporalio.client import Client

from core.limits import configure
from tests.conftest import Herald, HeraldFactory
from workflows.notification import SA_TENANT

log = logging.getLogger(__name__)
ADMIN_KEY = "admin-key-of-the-openapi-fuzz-test"
# The same cases every run; set these to explore others (a failure prints what was sent).
SEED = int(os.environ.get("HERALD_FUZZ_SEED", "20261124"))
# Per operation and phase: about 4,800 requests over the 46 operations.
MAX_EXAMPLES = int(os.environ.get("HERALD_FUZZ_EXAMPLES", "25"))
# Refusals of a schema-valid request that JSON Schema cannot state. Each is a 422 naming
# the field; any other refusal of valid data fails the test.
BEYOND_SCHEMA = {
    "unknown_subscriber": "a recipient id that names no subscriber (yet)",
    "not_found": "a flow, topic or subscriber the body names does not exist",
    "flow_type_mismatch": "the flow named handles another event type",
    "wait_without_send": "steps in order: a wait needs a later send",
    "delay_without_send": "steps in order: a delay needs a later send",
    "engagement_without_send": "steps in order: 'delivered' etc. need an earlier send",
    "data_too_large": "a size of the data as serialized JSON",
    "too_many_distinct": "push tokens are counted once repeats are dropped",
    "workflow_input_too_large": "a size of the flow as serialized JSON",
    "window_order": "since before until: two values compared",
    "window_too_large": "the buckets between since and until",
    "in_past": "a time compared with now",
    "interval_too_short": "an ISO 8601 duration compared with one minute",
    "idempotency_key_mismatch": "the body's key against the Idempotency-Key header",
    "blocked_address": "where a webhook host resolves (the SSRF guard)",
    "invalid_schedule": "Temporal's cron grammar",
    "template": "Jinja's grammar, or a template's size in UTF-8 bytes",
}


@pytest.fixture(autouse=True)
def _default_limits() -> Iterator[None]:
    yield
    configure(None)


@dataclass
class Outbound:
    """Names looked up and addresses connected to, off loopback: refused and kept here."""

    lookups: list[str] = field(default_factory=list)
    connects: list[str] = field(default_factory=list)


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def outbound(monkeypatch: pytest.MonkeyPatch) -> Outbound:
    """Nothing leaves the host: other names do not resolve, other addresses refuse."""
    seen = Outbound()
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not _loopback(name):
            seen.lookups.append(name)
            raise socket.gaierror(socket.EAI_NONAME, "not looked up in the fuzz test")
        return lookup(host, *args, **kwargs)

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(str(address[0])):
            seen.connects.append(str(address[0]))
            raise ConnectionRefusedError(f"{address[0]} is off loopback")
        connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    return seen


class LoopBridge:
    """An ASGI app that hands each request to the real app, on the test's event loop.

    Schemathesis calls ASGI apps from an event loop of its own, in its worker thread; the
    app, its database engine and its Temporal client belong to the test's loop. The
    lifespan is the fixture's, so this bridge declines one.
    """

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("the test fixture runs the lifespan")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        future = asyncio.run_coroutine_threadsafe(self._call(dict(scope), body), self.loop)
        for message in await asyncio.wrap_future(future):
            await send(message)

    async def _call(self, scope: dict[str, Any], body: bytes) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:  # a disconnect never comes: the answer is read whole
                await asyncio.Event().wait()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        return sent


def beyond_schema(failure: Failure, response: Any) -> str | None:
    """The error type, when valid data was refused for a reason JSON Schema cannot state."""
    if not isinstance(failure, RejectedPositiveData) or response.status_code != 422:
        return None
    try:
        kinds = {e.get("type") for e in json.loads(response.content)["detail"]}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if kinds and kinds <= BEYOND_SCHEMA.keys():
        return ",".join(sorted(kinds))
    return None


@dataclass
class Run:
    cases: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # one example per kind
    tolerated: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def fuzz(schema: Any) -> Run:
    """The engine the CLI runs (examples, coverage, fuzzing and stateful phases)."""
    run = Run()

    @schema.hook
    def filter_failure(ctx: Any, failure: Failure, case: Any, response: Any) -> bool:
        kind = beyond_schema(failure, response)
        if kind is not None:
            run.tolerated[kind] += 1
        return kind is None

    for event in engine_for(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            run.cases += len(event.recorder.cases)
            _record_failures(run, event.recorder)
        elif isinstance(event, events.NonFatalError):
            run.errors.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            run.errors.append(repr(event.exception))
    return run


def _record_failures(run: Run, recorder: Any) -> None:
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.failure_info is None:
                continue
            interaction = recorder.interactions.get(case_id)
            request = interaction.request if interaction else None
            response = interaction.response if interaction else None
            status = response.status_code if response else None
            kind = f"{recorder.label} / {check.name} / {status}"
            sent = request.body if request is not None else None
            run.failures.setdefault(
                kind,
                f"{request.method if request else ''} {request.uri if request else ''}\n"
                f"  sent: {(sent or b'')[:300]!r}\n"
                f"  got: {(response.content if response else b'')[:300]!r}\n"
                f"  {check.failure_info.failure}",
            )


async def test_the_openapi_document_holds_under_every_check(
    herald_factory: HeraldFactory, outbound: Outbound
) -> None:
    # The provider callbacks are configured (signed, refused 403 here), the admin API too.
    herald = await herald_factory(queues=(), admin_key=ADMIN_KEY)
    document = (await herald.http.get("/openapi.json")).json()
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "checks": {"enabled": True},
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "cache": {"enabled": False},
            "workers": 1,
            "auth": {
                "openapi": {
                    "HeraldApiKey": {"bearer": herald.api_key},
                    "HeraldAdminKey": {"bearer": ADMIN_KEY},
                }
            },
        }
    )
    schema = schemathesis.openapi.from_dict(document, config=config)
    schema.app = LoopBridge(herald.app, asyncio.get_running_loop())
    try:
        run = await asyncio.to_thread(fuzz, schema)
    finally:
        await _stop_what_it_started(herald)

    log.info(
        "%d cases; valid data refused beyond the schema: %s; off-loopback lookups refused: %d",
        run.cases,
        dict(run.tolerated),
        len(outbound.lookups),
    )
    report = "\n\n".join(f"{kind}\n  {example}" for kind, example in run.failures.items())
    assert not run.errors, "\n\n".join(run.errors)
    assert not run.failures, f"{len(run.failures)} kinds of failure:\n\n{report}"
    assert run.cases > 1000, run.cases  # the bound is per operation: all of them ran
    assert not outbound.connects, outbound.connects


async def _stop_what_it_started(herald: Herald) -> None:
    """No worker serves the tenant: its workflows and schedules would wait forever."""
    client: Client = herald.client
    async for schedule in await client.list_schedules():
        if schedule.id.startswith(f"herald/{herald.tenant}/"):
            await client.get_schedule_handle(schedule.id).delete()
    query = f"{SA_TENANT.name} = '{herald.tenant}' AND ExecutionStatus = 'Running'"
    async for wf in client.list_workflows(query):
        await client.get_workflow_handle(wf.id, run_id=wf.run_id).terminate("fuzz test over")
