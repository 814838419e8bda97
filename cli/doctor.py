"""``herald doctor``: is this deployment able to run? One line per check, ok or FAIL and why.

It reads the settings directly, as the API and worker do, and changes nothing: it does
not migrate, does not register search attributes, and never sends a message (each
provider is asked something that proves the credentials, such as a key's scopes).
"""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.service import RPCError

from cli.api import flat
from cli.common import JSON_OPTION, print_json, settings_error
from cli.provider_checks import PROVIDER_CHECKS, Problem
from core.settings import Settings, get_settings
from core.temporal import connect_options, connect_when_ready
from core.types import SEARCH_ATTRIBUTES, Channel
from store.schema import SchemaOutdatedError, head, require_current

# Long enough for a remote server, short enough that a black-holed address is not a hang.
TIMEOUT_SECONDS = 5.0
# Channels whose providers hold credentials (webhooks are signed with Herald's own secrets).
CREDENTIAL_CHANNELS = (Channel.EMAIL, Channel.SMS, Channel.PUSH)


class Check(BaseModel):
    check: str
    ok: bool
    detail: str


def doctor(as_json: bool = JSON_OPTION) -> None:
    """Check the settings, the database, Temporal and each provider; exit 1 if any failed."""
    results: list[Check] = []
    for check in _run():
        results.append(check)
        if not as_json:
            typer.echo(f"{'ok' if check.ok else 'FAIL':<4}  {check.check:<17}  {check.detail}")
    if as_json:
        print_json(results)
    if not all(c.ok for c in results):
        raise typer.Exit(1)


def _run() -> Iterator[Check]:
    try:
        settings = get_settings()
    except ValidationError as exc:
        yield Check(check="settings", ok=False, detail=settings_error(exc))
        return  # everything else depends on them
    yield Check(check="settings", ok=True, detail=f"HERALD_ENV={settings.env}")
    yield _guard("database", check_database, settings)
    yield from asyncio.run(check_temporal(settings))
    gc.collect()  # drop the Temporal runtime now, not at interpreter exit
    for channel in CREDENTIAL_CHANNELS:
        for name in settings.providers_for(channel):
            check = PROVIDER_CHECKS.get(name)
            if check is None:  # the sandbox
                detail = "sandbox: no provider configured, messages are recorded, not sent"
                yield Check(check=channel.value, ok=True, detail=detail)
            else:
                yield _guard(f"{channel.value}/{name}", check, settings)


def _guard(name: str, check: Callable[[Settings], str], settings: Settings) -> Check:
    """Run one check: its detail when ok, one line saying what is wrong otherwise."""
    try:
        return Check(check=name, ok=True, detail=check(settings))
    except Problem as exc:
        return Check(check=name, ok=False, detail=flat(str(exc), 400))
    except Exception as exc:  # a doctor reports, it does not crash
        return Check(check=name, ok=False, detail=flat(f"{type(exc).__name__}: {exc}", 400))


# --------------------------------------------------------------------------- database


def check_database(settings: Settings) -> str:
    """The database answers and its schema is this code's (``herald migrate`` otherwise)."""
    try:
        url = make_url(settings.database_url)
    except ArgumentError as exc:
        raise Problem(f"HERALD_DATABASE_URL is not a database URL: {exc}") from exc
    shown = url.render_as_string(hide_password=True)
    backend = url.get_backend_name()
    # Connecting would create an empty file (and make_engine its directory).
    file = url.database if backend == "sqlite" and url.database != ":memory:" else None
    if file and not Path(file).is_file():
        raise Problem(f"{shown}: no database file there: run `herald migrate`")
    connect_args = {"connect_timeout": int(TIMEOUT_SECONDS)} if backend == "postgresql" else {}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        require_current(engine)
    except SchemaOutdatedError as exc:
        raise Problem(f"{shown}: {exc}") from exc
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        raise Problem(f"{shown}: cannot connect: {flat(str(reason), 200)}") from exc
    finally:
        engine.dispose()
    return f"{shown}, schema at {head()}"


# --------------------------------------------------------------------------- Temporal


async def check_temporal(settings: Settings) -> list[Check]:
    """Temporal answers on the namespace, which has every search attribute Herald sets."""
    target, namespace = settings.temporal_target, settings.temporal_namespace
    # A runtime of our own, gone when this returns: the SDK's default one, alive at
    # interpreter exit, can abort a short-lived process (PyGILState_Release).
    runtime = Runtime(telemetry=TelemetryConfig())
    try:
        client = await asyncio.wait_for(
            connect_when_ready(target, within=0, runtime=runtime, **connect_options(settings)),
            TIMEOUT_SECONDS,
        )
    except TimeoutError:
        return [_failed("temporal", f"{target}: no answer within {TIMEOUT_SECONDS:g} s")]
    except Exception as exc:
        return [_failed("temporal", f"cannot connect to {target}: {_rpc_reason(exc)}")]
    checks = [Check(check="temporal", ok=True, detail=f"{target}, namespace {namespace}")]
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace),
            timeout=timedelta(seconds=TIMEOUT_SECONDS),
        )
    except RPCError as exc:
        return [*checks, _failed("search attributes", f"namespace {namespace}: {exc.message}")]
    have = dict(listed.custom_attributes)
    missing = [n for n in SEARCH_ATTRIBUTES if n not in have]
    wrong = [
        f"{n} is {IndexedValueType.Name(have[n]).removeprefix('INDEXED_VALUE_TYPE_').title()}"
        for n, kind in SEARCH_ATTRIBUTES.items()
        if n in have and IndexedValueType.Name(have[n]) != f"INDEXED_VALUE_TYPE_{kind.upper()}"
    ]
    if missing:
        detail = (
            f"missing on namespace {namespace}: {', '.join(missing)}; add each with "
            f"`temporal operator search-attribute create --namespace {namespace} "
            "--name NAME --type Keyword`"
        )
        return [*checks, _failed("search attributes", detail)]
    if wrong:
        detail = f"wrong type on namespace {namespace}: {', '.join(wrong)} (Keyword expected)"
        return [*checks, _failed("search attributes", detail)]
    ok = f"all {len(SEARCH_ATTRIBUTES)} registered on namespace {namespace}"
    return [*checks, Check(check="search attributes", ok=True, detail=ok)]


def _failed(name: str, detail: str) -> Check:
    return Check(check=name, ok=False, detail=flat(detail, 400))


def _rpc_reason(exc: Exception) -> str:
    """The OS's words ("Connection refused") from the SDK's long transport error, if any."""
    found = re.search(r'message: "([^"]+)"', str(exc))
    return found.group(1) if found else flat(str(exc), 200)
