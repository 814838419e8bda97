"""``herald doctor``'s provider checks: prove each provider's credentials without sending.

Each asks the provider a read-only question with the same SDK and base URL the channel
uses: SendGrid the key's scopes, Twilio the account, Google a token for the service
account, the SMTP relay an EHLO and a login. Each returns what it saw, or raises
``Problem`` with one line saying what is wrong.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http.client import HTTPException
from typing import Any
from urllib.error import URLError

import aiosmtplib
import requests
from google.auth import exceptions as google_exceptions
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import service_account
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient

from channels.smtp import parse_smtp_url
from core.settings import Settings

TIMEOUT_SECONDS = 10.0
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
SENDGRID_SEND_SCOPE = "mail.send"


class Problem(Exception):
    """What is wrong, in words an operator can act on."""


def check_sendgrid(settings: Settings) -> str:
    """GET /v3/scopes: the key is valid and may send mail."""
    assert settings.sendgrid_api_key is not None
    base = settings.sendgrid_base_url.rstrip("/")
    client = SendGridAPIClient(api_key=settings.sendgrid_api_key.get_secret_value(), host=base)
    client.client.timeout = TIMEOUT_SECONDS
    try:
        response = client.client.scopes.get()
    except HTTPError as exc:
        raise Problem(
            f"{base} refused HERALD_SENDGRID_API_KEY: {exc.status_code} {_sendgrid_error(exc)}"
        ) from exc
    except (URLError, HTTPException, OSError) as exc:
        raise Problem(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from exc
    scopes = json.loads(response.body or b"{}").get("scopes", [])
    if SENDGRID_SEND_SCOPE not in scopes:
        raise Problem(f"the key is valid but lacks the {SENDGRID_SEND_SCOPE} scope")
    return f"key accepted by {base}, with {SENDGRID_SEND_SCOPE}"


def _sendgrid_error(exc: HTTPError) -> str:
    try:
        errors = json.loads(exc.body)["errors"]
        return "; ".join(str(e.get("message", e)) for e in errors)
    except (ValueError, KeyError, TypeError, AttributeError):
        return str(exc.reason)


def check_twilio(settings: Settings) -> str:
    """Fetch the account: the sid and token are valid and the account is active."""
    sid, token = settings.twilio_account_sid, settings.twilio_auth_token
    assert sid is not None and token is not None
    base = settings.twilio_base_url.rstrip("/")
    client = TwilioClient(
        sid, token.get_secret_value(), http_client=TwilioHttpClient(timeout=TIMEOUT_SECONDS)
    )
    client.edge = client.region = None  # as the channel does: the base URL alone routes
    client.api.base_url = base
    try:
        account = client.api.v2010.accounts(sid).fetch()
    except TwilioRestException as exc:
        raise Problem(f"{base} refused account {sid}: {exc.status} {exc.msg}") from exc
    except requests.RequestException as exc:
        raise Problem(f"cannot reach {base}: {type(exc).__name__}") from exc
    if account.status != "active":
        raise Problem(f"account {sid} is {account.status}, not active")
    return f"account {sid} active at {base}"


class _TimedRequest(GoogleRequest):
    """google-auth's transport waits 120 s by default."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = TIMEOUT_SECONDS
        return super().__call__(*args, **kwargs)


def check_fcm(settings: Settings) -> str:
    """Get an access token from the service account's token_uri, as firebase-admin would."""
    path = settings.fcm_credentials_file
    assert path is not None
    try:
        info = json.loads(path.read_text())
        credentials = service_account.Credentials.from_service_account_info(
            info, scopes=[FCM_SCOPE]
        )
    except OSError as exc:
        raise Problem(f"cannot read HERALD_FCM_CREDENTIALS_FILE {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise Problem(f"{path} is not a service-account JSON file: {exc}") from exc
    if not info.get("project_id"):
        raise Problem(f"{path} has no project_id")
    token_uri = info.get("token_uri", "")
    try:
        credentials.refresh(_TimedRequest())
    except google_exceptions.RefreshError as exc:
        reason = exc.args[0] if exc.args else exc  # args[1] is the whole response body
        who = credentials.service_account_email
        raise Problem(f"{token_uri} refused {who}: {reason}") from exc
    except google_exceptions.TransportError as exc:
        raise Problem(f"cannot reach {token_uri}: {type(exc.__cause__ or exc).__name__}") from exc
    return f"token issued for {credentials.service_account_email} (project {info['project_id']})"


def check_smtp(settings: Settings) -> str:
    """Connect, EHLO (and STARTTLS if asked), log in, QUIT: no MAIL command is sent."""
    assert settings.smtp_url is not None
    try:
        server = parse_smtp_url(settings.smtp_url.get_secret_value())
    except ValueError as exc:
        raise Problem(str(exc)) from exc
    where = f"{server.host}:{server.port}"

    async def session() -> None:
        smtp = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            use_tls=server.use_tls,
            start_tls=server.start_tls,  # False, not None: no upgrade unless asked, as sends
            timeout=TIMEOUT_SECONDS,
        )
        await smtp.connect()
        try:
            await smtp.ehlo()
            if server.username is not None:
                await smtp.login(server.username, server.password or "")
        except BaseException:
            smtp.close()  # a QUIT could fail too and hide why
            raise
        await smtp.quit()

    try:
        asyncio.run(session())
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise Problem(
            f"{where} refused the login of {server.username}: {exc.code} {exc.message}"
        ) from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise Problem(f"{where} answered {exc.code} {exc.message}") from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise Problem(f"cannot talk to {where}: {exc}") from exc
    login = f"logged in as {server.username}" if server.username else "no login configured"
    return f"{where} accepted EHLO, {login}"


PROVIDER_CHECKS: dict[str, Callable[[Settings], str]] = {
    "sendgrid": check_sendgrid,
    "twilio": check_twilio,
    "fcm": check_fcm,
    "smtp": check_smtp,
}
