"""Inbound provider callbacks: SendGrid's Event Webhook and Twilio's status callbacks.

No API key: each request is authenticated by the provider's signature. A verified
callback is always acknowledged, even when it names a message Herald does not know,
so the provider stops retrying; a forged one changes nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from api.deps import EngineDep, GatewayDep, SettingsDep
from api.engagement import signal_reached
from api.responses import error
from core.lifecycle import Observation
from core.provider_events import (
    SENDGRID_EVENTS_PATH,
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    TWILIO_SIGNATURE_HEADER,
    TWILIO_STATUS_PATH,
    sendgrid_observations,
    twilio_observation,
    verify_sendgrid,
    verify_twilio,
)
from store.lifecycle import Recorded, record_batch

log = logging.getLogger(__name__)

router = APIRouter(tags=["providers"])
SIGNATURE = error(403, "Invalid or missing provider signature")


def _header(name: str, description: str) -> dict[str, Any]:
    """A header the signature check reads (absent: 403, as a wrong signature)."""
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


# The routes read their bodies raw (the signatures cover the exact bytes): say what they take.
SENDGRID_REQUEST = {
    "parameters": [
        _header(SENDGRID_SIGNATURE_HEADER, "Base64 ECDSA signature of timestamp + body"),
        _header(SENDGRID_TIMESTAMP_HEADER, "The signed timestamp"),
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {"type": "object", "additionalProperties": True},
                    "description": "SendGrid Event Webhook events",
                }
            }
        },
    },
}
TWILIO_REQUEST = {
    "parameters": [
        _header(TWILIO_SIGNATURE_HEADER, "Base64 HMAC-SHA1 of the URL and the form"),
        {
            "name": "delivery",
            "in": "query",
            "required": False,
            "description": "The delivery id Herald put in the callback URL",
            "schema": {"type": "string"},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Twilio's status callback (MessageSid, MessageStatus, ...)",
                }
            }
        },
    },
}


class EventsReceived(BaseModel):
    """What became of a SendGrid batch; ``ignored`` events are types Herald does not track."""

    received: int
    stored: int
    duplicates: int
    unknown: int
    ignored: int


@router.post(
    SENDGRID_EVENTS_PATH,
    response_model=EventsReceived,
    openapi_extra=SENDGRID_REQUEST,
    responses={
        **error(400, "Not a JSON array of events"),
        **SIGNATURE,
        **error(413, "Body over HERALD_MAX_REQUEST_BYTES"),
        **error(503, "Off: HERALD_SENDGRID_WEBHOOK_PUBLIC_KEY is not set"),
    },
)
async def sendgrid_events(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    gateway: GatewayDep,
    tasks: BackgroundTasks,
) -> EventsReceived:
    """A batch of signed SendGrid events (up to thousands), stored in one transaction."""
    key = settings.sendgrid_webhook_public_key
    if not key:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "SendGrid events are refused: set HERALD_SENDGRID_WEBHOOK_PUBLIC_KEY "
            "to the verification key of the signed Event Webhook",
        )
    body = await request.body()
    signature = request.headers.get(SENDGRID_SIGNATURE_HEADER, "")
    timestamp = request.headers.get(SENDGRID_TIMESTAMP_HEADER, "")
    if not verify_sendgrid(key, body, signature, timestamp):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid or missing SendGrid signature")
    try:
        events = json.loads(body)
    except ValueError:
        events = None
    if not isinstance(events, list):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "expected a JSON array of events")
    observations = sendgrid_observations(events)
    recorded = await _record(engine, observations, "sendgrid")
    tasks.add_task(signal_reached, gateway, recorded.reached)
    return EventsReceived(
        received=len(events),
        stored=recorded.stored,
        duplicates=recorded.duplicates,
        unknown=len(recorded.unknown),
        ignored=len(events) - len(observations),
    )


@router.post(
    TWILIO_STATUS_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=TWILIO_REQUEST,
    responses={
        **SIGNATURE,
        **error(413, "Body over HERALD_MAX_REQUEST_BYTES"),
        **error(503, "Off: HERALD_TWILIO_AUTH_TOKEN is not set"),
    },
)
async def twilio_status(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    gateway: GatewayDep,
    tasks: BackgroundTasks,
) -> Response:
    """A Twilio status callback, signed over the URL Herald gave Twilio and the form."""
    token = settings.twilio_auth_token
    if token is None or not token.get_secret_value():
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "Twilio callbacks are refused: HERALD_TWILIO_AUTH_TOKEN is not set",
        )
    body = await request.body()
    try:
        params = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        params = {}
    # The URL as Twilio was given it: HERALD_PUBLIC_URL, the route, the raw query string.
    url = settings.base_url + TWILIO_STATUS_PATH
    if request.url.query:
        url += "?" + request.url.query
    signature = request.headers.get(TWILIO_SIGNATURE_HEADER, "")
    if not verify_twilio(token.get_secret_value(), url, params, signature):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid or missing Twilio signature")
    obs = twilio_observation(params, request.query_params.get("delivery"))
    if obs is not None:
        recorded = await _record(engine, [obs], "twilio")
        tasks.add_task(signal_reached, gateway, recorded.reached)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _record(engine: Engine, observations: list[Observation], source: str) -> Recorded:
    recorded = await run_in_threadpool(record_batch, engine, observations)
    if recorded.unknown:
        log.warning(
            "%s callback: %d of %d observations name no known delivery (first: %s)",
            source,
            len(recorded.unknown),
            len(observations),
            _describe(recorded.unknown[0]),
        )
    log.info(
        "%s callback: %d stored, %d duplicates, %d unknown",
        source,
        recorded.stored,
        recorded.duplicates,
        len(recorded.unknown),
    )
    return recorded


def _describe(obs: Observation) -> str:
    return (
        f"{obs.kind.value} delivery={obs.delivery_id} message={obs.provider_message_id} "
        f"event={obs.external_id}"
    )
