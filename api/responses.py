"""Error answers as the OpenAPI document declares them, in one place for every route.

Client generators and API consumers build on the document, so a status a route can answer
is declared with the shape of its body. Routes name their own (404, 409, 503 ...) with
``responses(...)``; ``declare_common`` adds what the shared machinery answers on any route:
the API key check (401, 429) and the reading of a request body (400, 413).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

Responses = dict[int | str, dict[str, Any]]


class Problem(BaseModel):
    """The body of an error answer: what went wrong, in words."""

    detail: str


class FieldProblem(BaseModel):
    """One refused field, shaped like FastAPI's own validation errors."""

    loc: list[str | int]
    msg: str
    type: str


class FieldProblems(BaseModel):
    detail: list[FieldProblem]


class RateLimit(BaseModel):
    message: str
    limit_per_second: float
    burst: int
    retry_after_seconds: int


class RateLimited(BaseModel):
    detail: RateLimit


class Outage(BaseModel):
    """What was stored before Temporal could not be reached: retry with the same id."""

    model_config = ConfigDict(extra="allow")

    message: str
    event_id: str | None = Field(default=None, description="POST /v1/events")
    broadcast_id: str | None = Field(default=None, description="POST /v1/broadcasts")
    replay_id: str | None = Field(default=None, description="POST /v1/events/replay")


class Unavailable(BaseModel):
    detail: str | Outage


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until the tenant may send again",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
_KNOWN: dict[int, tuple[type[BaseModel], str]] = {
    400: (Problem, "The request body could not be read"),
    401: (Problem, "Missing or invalid API key"),
    403: (Problem, "Invalid or missing signature"),
    404: (Problem, "Not found"),
    409: (Problem, "Conflicts with the current state"),
    413: (FieldProblems, "Body over HERALD_MAX_REQUEST_BYTES (bulk: _MAX_BULK_REQUEST_BYTES)"),
    429: (RateLimited, "Over the tenant's rate limit (HERALD_TENANT_RATE_LIMIT)"),
    503: (Unavailable, "Temporal is unreachable; retrying is safe"),
}


def error(code: int, description: str | None = None) -> Responses:
    """One declared error answer; ``description`` says when this route gives it."""
    model, default = _KNOWN[code]
    entry: dict[str, Any] = {"model": model, "description": description or default}
    if code == 429:
        entry["headers"] = _RETRY_AFTER
    return {code: entry}


def responses(*codes: int) -> Responses:
    """Several error answers with their default descriptions."""
    merged: Responses = {}
    for code in codes:
        merged.update(error(code))
    return merged


def declare_common(router: APIRouter, tenant_dependency: Any) -> None:
    """Declare, on each of the router's routes, what the machinery they share answers.

    Idempotent: ``create_app`` runs it on the module-level routers each time it includes them.
    """
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        common: Responses = {}
        if _depends_on(route.dependant, tenant_dependency):
            common.update(responses(401, 429))
        if route.body_field is not None:
            common.update(responses(400, 413))
        route.responses = {**common, **route.responses}


def _depends_on(dependant: Dependant, call: Any) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)
