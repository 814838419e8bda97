"""A fake SendGrid / Twilio / Google-token / FCM / webhook-receiver server for tests.

It speaks the real wire formats so the real SDKs can be pointed at it: adapters are
tested end to end over HTTP and never by mocking the SDK call. One uvicorn server runs
in a background thread on 127.0.0.1 with a free port.

Typical use::

    with FakeProvider() as provider:
        settings = Settings(**provider.settings_overrides(tmp_path))
        provider.fail("twilio", 400, body=twilio_error_body(21211, "Invalid 'To'"))
        ...
        [req] = provider.requests("twilio")

Provider callbacks (signed SendGrid events, Twilio status callbacks that echo what Herald
sent) are built by ``tests.fakes.callbacks``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.callbacks import TWILIO_AUTH_TOKEN, sendgrid_public_key_b64

log = logging.getLogger(__name__)

Kind = Literal["sendgrid", "twilio", "token", "fcm", "webhook"]
KINDS: tuple[str, ...] = get_args(Kind)

PROJECT_ID = "herald-test"

# FCM error code -> (HTTP status, google.rpc status), as the real FCM v1 API answers.
FCM_ERRORS: dict[str, tuple[int, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED"),
    "UNAVAILABLE": (503, "UNAVAILABLE"),
    "INTERNAL": (500, "INTERNAL"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED"),
}


# --------------------------------------------------------------------------- error bodies


def sendgrid_error_body(message: str, field: str | None = None) -> dict[str, Any]:
    """SendGrid v3 error JSON: ``{"errors": [{"message", "field", "help"}]}``."""
    return {"errors": [{"message": message, "field": field, "help": None}]}


def twilio_error_body(code: int, message: str, status: int = 400) -> dict[str, Any]:
    """Twilio REST error JSON (the legacy shape the SDK turns into TwilioRestException)."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def fcm_error_status(error_code: str) -> int:
    """HTTP status FCM uses for ``error_code`` (e.g. 404 for UNREGISTERED)."""
    return FCM_ERRORS.get(error_code, (500, "INTERNAL"))[0]


def fcm_error_body(error_code: str, message: str | None = None) -> dict[str, Any]:
    """Google API error JSON with an ``FcmError`` detail, as FCM v1 returns it."""
    status, rpc_status = FCM_ERRORS.get(error_code, (500, "INTERNAL"))
    return {
        "error": {
            "code": status,
            "message": message or f"Fake FCM error {error_code}",
            "status": rpc_status,
            "details": [
                {
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": error_code,
                }
            ],
        }
    }


def _default_error_body(kind: str, status: int) -> Any:
    if kind == "sendgrid":
        return sendgrid_error_body(f"fake SendGrid error {status}")
    if kind == "twilio":
        code = {401: 20003, 404: 20404, 429: 20429}.get(status, 20500 if status >= 500 else status)
        return twilio_error_body(code, f"fake Twilio error {status}", status)
    if kind == "fcm":
        rpc = {
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            403: "PERMISSION_DENIED",
            404: "NOT_FOUND",
            429: "RESOURCE_EXHAUSTED",
            503: "UNAVAILABLE",
        }.get(status, "INTERNAL")
        return {"error": {"code": status, "message": f"fake FCM error {status}", "status": rpc}}
    if kind == "token":
        return {"error": "invalid_grant", "error_description": f"fake token error {status}"}
    return f"fake webhook receiver error {status}"


def _encode_body(body: Any) -> tuple[bytes, str]:
    if isinstance(body, bytes):
        return body, "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body).encode(), "application/json"


# --------------------------------------------------------------------------- records/faults


@dataclass(frozen=True)
class Recorded:
    """One request the fake received (failed ones included; see ``status``)."""

    kind: str
    method: str
    path: str
    headers: dict[str, str]  # keys lower-cased
    body: bytes
    json: Any  # parsed JSON body, or None
    form: dict[str, str]  # parsed form body, or {}
    status: int  # the status the fake answered with
    received_at: float
    # The id the fake answered with: SendGrid's X-Message-Id, Twilio's MessageSid.
    message_id: str | None = None
    # The client's address and port: requests on one kept-alive connection share it.
    peer: str | None = None


@dataclass
class _Fault:
    status: int
    remaining: int | None  # None: until cleared
    body: bytes
    content_type: str
    headers: dict[str, str]
    when: str | None
    delay: float

    def matches(self, path: str, body: bytes) -> bool:
        return self.when is None or self.when in path or self.when.encode() in body


@dataclass
class _State:
    lock: threading.Condition = field(default_factory=threading.Condition)
    records: list[Recorded] = field(default_factory=list)
    faults: dict[str, list[_Fault]] = field(default_factory=dict)


# --------------------------------------------------------------------------- keys


@functools.lru_cache(maxsize=1)
def _private_key_pem() -> str:
    """A throwaway RSA key, generated once per process because generation is slow-ish."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def dead_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (for network-error tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- the server


class FakeProvider:
    """The fake provider server; thread-safe, reusable across tests via ``reset()``."""

    def __init__(self) -> None:
        self._state = _State()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        # Called (on the server thread) with every finished request; the bench uses it.
        self.on_record: Callable[[Recorded], None] | None = None
        self.app = self._build_app()

    # ---- lifecycle

    def start(self) -> FakeProvider:
        if self._server is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            log_config=None,  # leave the test process's logging configuration alone
            access_log=False,
            lifespan="off",
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-provider", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("fake provider server failed to start")
            time.sleep(0.005)
        self._server, self._thread = server, thread
        log.debug("fake provider listening on %s", self.url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=5)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeProvider is not started")
        return f"http://127.0.0.1:{self._port}"

    # ---- configuration helpers

    def webhook_url(self, name: str = "default") -> str:
        return f"{self.url}/hooks/{name}"

    def service_account_file(self, tmp_path: Path) -> Path:
        """Write a service-account JSON whose ``token_uri`` is this fake's ``/token``."""
        path = Path(tmp_path) / "fcm-service-account.json"
        info = {
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": "fake-key-1",
            "private_key": _private_key_pem(),
            "client_email": f"herald@{PROJECT_ID}.iam.gserviceaccount.com",
            "client_id": "100000000000000000001",
            "auth_uri": f"{self.url}/auth",
            "token_uri": f"{self.url}/token",
        }
        path.write_text(json.dumps(info))
        return path

    def settings_overrides(self, tmp_path: Path) -> dict[str, Any]:
        """``Settings`` keyword arguments pointing every provider at this fake."""
        return {
            "sendgrid_api_key": "SG.test",
            "sendgrid_base_url": self.url,
            "twilio_account_sid": "AC" + "0123456789abcdef" * 2,
            "twilio_auth_token": TWILIO_AUTH_TOKEN,
            "twilio_from_number": "+15550000000",
            "twilio_base_url": self.url,
            "fcm_credentials_file": self.service_account_file(tmp_path),
            "fcm_base_url": self.url,
            # The fake signs its SendGrid events with this key's private half.
            "sendgrid_webhook_public_key": sendgrid_public_key_b64(),
        }

    @staticmethod
    def dead_url() -> str:
        return dead_url()

    # ---- faults and records

    def fail(
        self,
        kind: str,
        status: int,
        *,
        times: int | None = 1,
        body: Any = None,
        headers: dict[str, str] | None = None,
        when: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests of ``kind`` with ``status`` (None: until cleared).

        ``body`` may be a dict/list (sent as JSON), str or bytes; by default a realistic
        error body for ``kind``. ``when`` restricts the fault to requests whose path or raw
        body contains that text (e.g. one push token). ``delay`` sleeps before answering,
        for timeout tests. Faults queue up in the order they were added.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        raw, content_type = _encode_body(
            _default_error_body(kind, status) if body is None else body
        )
        fault = _Fault(status, times, raw, content_type, dict(headers or {}), when, delay)
        with self._state.lock:
            self._state.faults.setdefault(kind, []).append(fault)

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    def faults_left(self, kind: str) -> int:
        """Faults of ``kind`` no request has taken yet (one is taken as its request arrives,
        before a ``delay``): 0 tells that a delayed request is in flight."""
        with self._state.lock:
            return len(self._state.faults.get(kind, []))

    def reset(self) -> None:
        """Forget all records and faults."""
        with self._state.lock:
            self._state.faults.clear()
            self._state.records.clear()

    def requests(self, kind: str | None = None) -> list[Recorded]:
        with self._state.lock:
            return [r for r in self._state.records if kind is None or r.kind == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 5.0) -> list[Recorded]:
        """Block until at least ``count`` requests of ``kind`` arrived; return them."""
        deadline = time.monotonic() + timeout
        with self._state.lock:
            while True:
                found = [r for r in self._state.records if r.kind == kind]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"expected {count} {kind} request(s), got {len(found)}")
                self._state.lock.wait(remaining)

    def _take_fault(self, kind: str, path: str, body: bytes) -> _Fault | None:
        with self._state.lock:
            queue = self._state.faults.get(kind, [])
            for fault in queue:
                if not fault.matches(path, body):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        queue.remove(fault)
                return fault
        return None

    def _record(self, rec: Recorded) -> None:
        with self._state.lock:
            self._state.records.append(rec)
            self._state.lock.notify_all()
        if self.on_record is not None:
            self.on_record(rec)

    # ---- HTTP

    def _build_app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v3/mail/send", self._sendgrid, methods=["POST"]),
                Route("/v3/scopes", self._sendgrid_scopes, methods=["GET"]),
                Route("/2010-04-01/Accounts/{sid}/Messages.json", self._twilio, methods=["POST"]),
                Route("/2010-04-01/Accounts/{sid}.json", self._twilio_account, methods=["GET"]),
                Route("/token", self._token, methods=["POST"]),
                Route("/v1/projects/{project}/messages:send", self._fcm, methods=["POST"]),
                Route("/hooks/{name}", self._webhook, methods=["POST"]),
            ]
        )

    async def _handle(self, kind: str, request: Request, ok: Any) -> Response:
        """Record the request, then answer with a queued fault or ``ok(rec)``."""
        body = await request.body()
        parsed_json: Any = None
        form: dict[str, str] = {}
        content_type = request.headers.get("content-type", "")
        if "json" in content_type:
            try:
                parsed_json = json.loads(body)
            except ValueError:
                parsed_json = None
        elif "x-www-form-urlencoded" in content_type:
            form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        rec = Recorded(
            kind=kind,
            method=request.method,
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            json=parsed_json,
            form=form,
            status=0,
            received_at=time.time(),
            peer=None if request.client is None else f"{request.client.host}:{request.client.port}",
        )
        fault = self._take_fault(kind, rec.path, body)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            response: Response = Response(
                fault.body,
                status_code=fault.status,
                headers=fault.headers,
                media_type=fault.content_type,
            )
        else:
            response = ok(rec, request)
        message_id = _message_id(kind, response)
        self._record(dataclasses.replace(rec, status=response.status_code, message_id=message_id))
        return response

    async def _sendgrid(self, request: Request) -> Response:
        def ok(rec: Recorded, request: Request) -> Response:
            if not rec.headers.get("authorization", "").startswith("Bearer SG."):
                return JSONResponse(
                    sendgrid_error_body(
                        "The provided authorization grant is invalid, expired, or revoked"
                    ),
                    status_code=401,
                )
            mail = rec.json if isinstance(rec.json, dict) else {}
            for required in ("personalizations", "from", "content"):
                if not mail.get(required):
                    return JSONResponse(
                        sendgrid_error_body(f"The {required} field is required.", required),
                        status_code=400,
                    )
            return Response(status_code=202, headers={"X-Message-Id": secrets.token_urlsafe(16)})

        return await self._handle("sendgrid", request, ok)

    async def _sendgrid_scopes(self, request: Request) -> Response:
        """What a key may do (``herald doctor`` checks a key this way, sending nothing)."""

        def ok(rec: Recorded, request: Request) -> Response:
            if not rec.headers.get("authorization", "").startswith("Bearer SG."):
                return JSONResponse(sendgrid_error_body("authorization required"), status_code=401)
            return JSONResponse({"scopes": ["mail.send", "user.profile.read"]})

        return await self._handle("sendgrid", request, ok)

    async def _twilio_account(self, request: Request) -> Response:
        """The account resource, for credentials checks that send nothing."""

        def ok(rec: Recorded, request: Request) -> Response:
            sid = request.path_params["sid"]
            if _basic_user(rec.headers.get("authorization", "")) != sid:
                return JSONResponse(twilio_error_body(20003, "Authenticate", 401), status_code=401)
            return JSONResponse(
                {
                    "sid": sid,
                    "friendly_name": "Herald test account",
                    "status": "active",
                    "type": "Full",
                    "uri": f"/2010-04-01/Accounts/{sid}.json",
                }
            )

        return await self._handle("twilio", request, ok)

    async def _twilio(self, request: Request) -> Response:
        def ok(rec: Recorded, request: Request) -> Response:
            sid = request.path_params["sid"]
            if _basic_user(rec.headers.get("authorization", "")) != sid:
                return JSONResponse(twilio_error_body(20003, "Authenticate", 401), status_code=401)
            for required in ("To", "Body"):
                if not rec.form.get(required):
                    return JSONResponse(
                        twilio_error_body(
                            21604 if required == "To" else 21602,
                            f"A '{required}' parameter is required.",
                        ),
                        status_code=400,
                    )
            msg_sid = "SM" + uuid.uuid4().hex
            now = formatdate(usegmt=True).replace("GMT", "+0000")
            return JSONResponse(
                {
                    "account_sid": sid,
                    "api_version": "2010-04-01",
                    "body": rec.form.get("Body", ""),
                    "date_created": now,
                    "date_sent": None,
                    "date_updated": now,
                    "direction": "outbound-api",
                    "error_code": None,
                    "error_message": None,
                    "from": rec.form.get("From"),
                    "messaging_service_sid": rec.form.get("MessagingServiceSid"),
                    "num_media": "0",
                    "num_segments": "1",
                    "price": None,
                    "price_unit": "USD",
                    "sid": msg_sid,
                    "status": "queued",
                    "subresource_uris": {
                        "media": f"/2010-04-01/Accounts/{sid}/Messages/{msg_sid}/Media.json"
                    },
                    "to": rec.form.get("To"),
                    "uri": f"/2010-04-01/Accounts/{sid}/Messages/{msg_sid}.json",
                },
                status_code=201,
            )

        return await self._handle("twilio", request, ok)

    async def _token(self, request: Request) -> Response:
        def ok(rec: Recorded, request: Request) -> Response:
            return JSONResponse(
                {
                    "access_token": "ya29.fake-" + secrets.token_hex(8),
                    "expires_in": 3600,
                    "token_type": "Bearer",
                }
            )

        return await self._handle("token", request, ok)

    async def _fcm(self, request: Request) -> Response:
        def ok(rec: Recorded, request: Request) -> Response:
            project = request.path_params["project"]
            if not rec.headers.get("authorization", "").startswith("Bearer "):
                return JSONResponse(
                    {
                        "error": {
                            "code": 401,
                            "message": "Missing token",
                            "status": "UNAUTHENTICATED",
                        }
                    },
                    status_code=401,
                )
            if not isinstance(rec.json, dict) or "message" not in rec.json:
                return JSONResponse(fcm_error_body("INVALID_ARGUMENT", "No message"), 400)
            return JSONResponse({"name": f"projects/{project}/messages/{uuid.uuid4().hex[:16]}"})

        return await self._handle("fcm", request, ok)

    async def _webhook(self, request: Request) -> Response:
        def ok(rec: Recorded, request: Request) -> Response:
            return Response("ok", status_code=200, media_type="text/plain")

        return await self._handle("webhook", request, ok)


def _message_id(kind: str, response: Response) -> str | None:
    """What a provider callback about this message would name it by."""
    if kind == "sendgrid":
        return response.headers.get("x-message-id")
    if kind == "twilio" and response.status_code == 201:
        sid: str = json.loads(bytes(response.body))["sid"]
        return sid
    return None


def _basic_user(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, _ = base64.b64decode(value).decode().partition(":")
    except ValueError:
        return None
    return user
