"""Request bodies over HERALD_MAX_REQUEST_BYTES get a 413, without being read whole.

A plain ASGI middleware: a declared ``Content-Length`` over the limit is refused before
the app runs; otherwise the bytes are counted as they stream in and reading stops at the
first chunk past the limit. Whatever the app made of the cut-short body (FastAPI answers
400 to a body it could not read) is replaced by the 413.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.limits import LimitSettings, env_name

# Paths that take larger bodies (HERALD_MAX_BULK_REQUEST_BYTES).
BULK_PATHS = frozenset({"/v1/subscribers/bulk"})


class _TooLargeError(Exception):
    """Raised into the app from ``receive``: the body went over the limit."""


class BodyLimit:
    def __init__(
        self, app: ASGIApp, limits: LimitSettings, bulk_paths: Collection[str] = BULK_PATHS
    ) -> None:
        self.app = app
        self.limits = limits
        self.bulk_paths = frozenset(bulk_paths)

    def _limit(self, path: str) -> tuple[int, str]:
        if path in self.bulk_paths:
            return self.limits.max_bulk_request_bytes, "max_bulk_request_bytes"
        return self.limits.max_request_bytes, "max_request_bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self._limit(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit, setting)
            return
        received = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal received, over
            if over:
                raise _TooLargeError
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise _TooLargeError
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over:
                return  # the app's answer to a cut-short body; the 413 goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _refuse(send, limit, setting)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, limit: int, setting: str) -> None:
    body = json.dumps(
        {
            "detail": [
                {
                    "loc": ["body"],
                    "msg": f"request body over {limit:,} bytes ({env_name(setting)})",
                    "type": "request_too_large",
                }
            ]
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
