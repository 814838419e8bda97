"""Which methods a path takes, as the OpenAPI document says, and a 405 naming them all.

As in OpenAPI, a concrete path (``/v1/events/replay``) is its own resource, never an id of
the templated one beside it (``/v1/events/{event_id}``): path convertors keep the templated
route off those names, so ``GET /v1/events/replay`` is a 405, not "event 'replay' not found".
And Starlette answers a 405 with the ``Allow`` of the first route whose path matched, so with
``GET`` and ``POST`` on one path as two routes, a ``PATCH`` would be told only one of them
(RFC 9110 wants them all).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from api.responses import Problem

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class _Except(Convertor[str]):
    """One path segment, except the names of the concrete paths beside it."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.regex = rf"(?!(?:{'|'.join(map(re.escape, names))})$)[^/]+"  # type: ignore[misc]

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def segment(param: str, *names: str) -> str:
    """``{param:...}`` for a route path, never matching ``names``."""
    convertor = "except_" + "_".join(names)
    register_url_convertor(convertor, _Except(*names))
    return f"{{{param}:{convertor}}}"


def other_than(*names: str) -> dict[str, Any]:
    """``json_schema_extra`` of such a path parameter: the names are not ids."""
    return {"not": {"enum": list(names)}}


def names_a_sibling(*names: str) -> dict[int | str, dict[str, Any]]:
    """The 405 of a templated route whose id is the name of a concrete path beside it."""
    listed = ", ".join(names)
    return {
        405: {
            "model": Problem,
            "description": f"The id is {listed}: a path of its own, which takes other methods",
        }
    }


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """The methods of the routes at this path; only the concrete ones if there are any."""
    concrete: set[str] = set()
    templated: set[str] = set()
    for route in _flat(app.router.routes):
        for method in METHODS:
            if route.matches({**request.scope, "method": method})[0] == Match.FULL:
                (templated if getattr(route, "param_convertors", None) else concrete).add(method)
    return [m for m in METHODS if m in (concrete or templated)]


def _flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes themselves: FastAPI keeps an included router's routes inside it."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield route


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allowed = allowed_methods(request.app, request)
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
