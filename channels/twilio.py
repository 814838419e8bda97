"""SMS through Twilio's Messages API, using the official ``twilio`` SDK."""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlencode

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from channels.base import (
    Message,
    PermanentProviderError,
    ProviderError,
    SendResult,
    SmsContent,
    TransientProviderError,
    parse_retry_after,
    unpack,
)
from core.provider_events import TWILIO_STATUS_PATH
from core.settings import Settings
from core.types import Channel

log = logging.getLogger(__name__)

PROVIDER = "twilio"
DEFAULT_TIMEOUT_SECONDS = 10.0

# Twilio error codes (https://www.twilio.com/docs/api/errors).
AUTH_CODES = frozenset({20003})
TRANSIENT_CODES = frozenset({20429})
# The number's fault, not the account's: another SMS provider would fail the same way.
# 21211 invalid, 21612 unreachable route, 21614 not mobile, 21610 unsubscribed (STOP).
RECIPIENT_CODES = frozenset({21211, 21612, 21614, 21610})


class RetryAfterHttpClient(TwilioHttpClient):
    """Remembers the last response's Retry-After header, per thread.

    ``TwilioRestException`` drops the response headers, so the adapter reads the header
    from here right after a failed call made on the same thread.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._local = threading.local()

    @property
    def last_retry_after(self) -> str | None:
        value: str | None = getattr(self._local, "retry_after", None)
        return value

    def request(self, *args: Any, **kwargs: Any) -> Response:
        self._local.retry_after = None
        response = super().request(*args, **kwargs)
        headers = response.headers or {}
        self._local.retry_after = headers.get("Retry-After")
        return response


class TwilioAdapter:
    channel = Channel.SMS
    provider = PROVIDER

    def __init__(self, settings: Settings, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        if not (
            settings.twilio_account_sid
            and settings.twilio_auth_token is not None
            and settings.twilio_from_number
        ):
            raise ValueError("TwilioAdapter needs the Twilio account sid, auth token and number")
        self._from = settings.twilio_from_number
        self._status_callback = f"{settings.base_url}{TWILIO_STATUS_PATH}"
        self._http = RetryAfterHttpClient(timeout=timeout)
        self._client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            http_client=self._http,
        )
        # Client() reads TWILIO_EDGE / TWILIO_REGION from os.environ and would then rewrite
        # the hostname; our base URL is the only routing input.
        self._client.edge = None
        self._client.region = None
        self._client.api.base_url = settings.twilio_base_url.rstrip("/")

    def send(self, message: Message) -> SendResult:
        content = unpack(message, SmsContent, provider=PROVIDER)
        try:
            created = self._client.messages.create(
                to=message.to[0],
                from_=self._from,
                body=content.text,
                status_callback=self._status_callback_for(message),
            )
        except (TwilioRestException, TwilioServiceException) as exc:
            raise self._classify(exc) from exc
        except requests.Timeout as exc:
            raise TransientProviderError(
                f"timeout talking to Twilio: {exc}", provider=PROVIDER, code="timeout"
            ) from exc
        except (requests.RequestException, OSError) as exc:
            raise TransientProviderError(
                f"network error talking to Twilio: {exc}", provider=PROVIDER, code="network"
            ) from exc
        except TwilioException as exc:
            # e.g. an unparseable success body: the message may or may not exist.
            raise TransientProviderError(
                f"unexpected Twilio response: {exc}", provider=PROVIDER, code="unexpected"
            ) from exc
        log.info(
            "twilio accepted delivery %s (sid %s, status %s)",
            message.delivery_id,
            created.sid,
            created.status,
        )
        return SendResult(provider=PROVIDER, provider_message_id=str(created.sid))

    def _status_callback_for(self, message: Message) -> str:
        """Names the delivery, so a callback that beats the recorded send still matches it."""
        return f"{self._status_callback}?{urlencode({'delivery': message.delivery_id})}"

    def _classify(self, exc: TwilioRestException | TwilioServiceException) -> ProviderError:
        status = int(exc.status)
        code = int(exc.code) if exc.code is not None else None
        # TwilioRestException.msg reads "Unable to create record: <Twilio's message>".
        detail = (exc.detail or exc.title) if isinstance(exc, TwilioServiceException) else exc.msg
        text = f"HTTP {status}, code {code}: {detail}"
        if status == 429 or status >= 500 or code in TRANSIENT_CODES:
            return TransientProviderError(
                text,
                provider=PROVIDER,
                code=str(code or status),
                retry_after=parse_retry_after(self._http.last_retry_after),
            )
        if status == 401 or code in AUTH_CODES:
            return PermanentProviderError(text, provider=PROVIDER, code="auth")
        # 21211 invalid number, 21614 not a mobile number, 21610 unsubscribed (STOP), ...
        return PermanentProviderError(
            text, provider=PROVIDER, code=str(code or status), recipient=code in RECIPIENT_CODES
        )
