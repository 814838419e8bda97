"""The HTTP client of the commands that act as a tenant (send, events, deliveries, retry, replay).

They go through the API, as an application would, with ``HERALD_URL`` and ``HERALD_KEY``:
the same validation, idempotency and dispatch path, and no database credentials needed.
Every failure (network, 4xx, 5xx) ends the command with one line naming the API's detail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from cli.common import fail

DEFAULT_URL = "http://127.0.0.1:8000"
# Replay batches and bulk retries answer when their work is done: allow them time.
TIMEOUT = httpx.Timeout(30.0, read=300.0)

M = TypeVar("M", bound=BaseModel)


class Api:
    """One tenant's view of a Herald API; methods return validated models or end the command."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        where = f"{method} {path}"
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, params=params, json=json, headers=headers)
        except httpx.TimeoutException:
            fail(f"{where}: the API at {self._http.base_url} did not answer in time")
        except httpx.TransportError as exc:
            fail(f"cannot reach the API at {self._http.base_url} (HERALD_URL): {exc or type(exc)}")
        if response.is_error:
            fail(f"{detail_of(response)} ({response.status_code} from {where})")
        return response

    def get(self, path: str, model: type[M], **params: Any) -> M:
        return parse(self.call("GET", path, params=params), model)

    def get_list(self, path: str, model: type[M], **params: Any) -> list[M]:
        return parse(self.call("GET", path, params=params), list[model])  # type: ignore[valid-type]

    def post(
        self, path: str, model: type[M], json: Any = None, headers: Mapping[str, str] | None = None
    ) -> M:
        return parse(self.call("POST", path, json=json, headers=headers), model)


@contextmanager
def api() -> Iterator[Api]:
    """The API named by HERALD_URL (default: the local `make run` one), as HERALD_KEY's tenant."""
    url = os.environ.get("HERALD_URL", "").strip() or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        fail(f"HERALD_URL must start with http:// or https://, not {url!r}")
    key = os.environ.get("HERALD_KEY", "").strip()
    if not key:
        fail("HERALD_KEY is not set: export a tenant's API key (`herald keys create`)")
    with httpx.Client(
        base_url=url.rstrip("/"),
        headers={"Authorization": f"Bearer {key}", "User-Agent": "herald-cli"},
        timeout=TIMEOUT,
    ) as http:
        yield Api(http)


def parse(response: httpx.Response, shape: Any) -> Any:
    try:
        return TypeAdapter(shape).validate_json(response.content)
    except ValidationError as exc:
        fail(
            f"unexpected answer from {response.request.method} {response.request.url.path}: "
            f"{flat(str(exc), 200)}"
        )


def detail_of(response: httpx.Response) -> str:
    """The API's ``detail`` on one line: a message, field errors, or a message with ids."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return flat(response.text, 200) or response.reason_phrase
    if isinstance(detail, str):
        return flat(detail)
    if isinstance(detail, list):  # FastAPI's validation errors: name each field
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            if isinstance(e, dict)
            else str(e)
            for e in detail
        )
    if isinstance(detail, dict):  # e.g. a 503 with the ids to retry with
        message = str(detail.get("message", ""))
        extra = ", ".join(f"{k} {v}" for k, v in detail.items() if k != "message")
        return flat(f"{message} ({extra})" if extra else message)
    return response.reason_phrase


# --------------------------------------------------------------------------- option values


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 time from an option (UTC when it names no offset); bad input exits 2."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(f"{option}: not an ISO 8601 time: {value!r} (e.g. 2026-11-24T09:00:00Z)", code=2)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


# --------------------------------------------------------------------------- text output

_SPACE = re.compile(r"\s+")


def flat(text: str | None, limit: int = 0) -> str:
    """One line (table cells, error lines), cut to ``limit`` characters when given."""
    line = _SPACE.sub(" ", text or "").strip()
    return line if not limit or len(line) <= limit else line[: limit - 1] + "…"


def when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"
