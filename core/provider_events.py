"""What SendGrid's Event Webhook and Twilio's status callbacks say, as lifecycle observations.

Pure parsing and verification: the routes verify with the providers' own helpers, map
here, and hand the observations to ``store.lifecycle``. Nothing here touches a database.
"""

from __future__ import annotations

import binascii
import functools
import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader
from twilio.request_validator import RequestValidator

from core.lifecycle import Kind, Observation, Source

log = logging.getLogger(__name__)

SENDGRID_EVENTS_PATH = "/v1/providers/sendgrid/events"
TWILIO_STATUS_PATH = "/v1/providers/twilio/status"
SENDGRID_SIGNATURE_HEADER: str = EventWebhookHeader.SIGNATURE
SENDGRID_TIMESTAMP_HEADER: str = EventWebhookHeader.TIMESTAMP
TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"

# The custom_args Herald puts on every SendGrid mail; SendGrid echoes them in each event.
DELIVERY_ARG = "herald_delivery_id"
TENANT_ARG = "herald_tenant_id"

SENDGRID_KINDS: dict[str, Kind] = {
    "processed": Kind.PROCESSED,
    "delivered": Kind.DELIVERED,
    "deferred": Kind.DEFERRED,
    "bounce": Kind.BOUNCED,
    "dropped": Kind.FAILED,
    "open": Kind.OPENED,
    "click": Kind.CLICKED,
    "spamreport": Kind.COMPLAINED,
    "unsubscribe": Kind.UNSUBSCRIBED,
    "group_unsubscribe": Kind.UNSUBSCRIBED,
}

# queued, sending, accepted and scheduled come before the carrier has it: nothing to record.
TWILIO_KINDS: dict[str, Kind] = {
    "sent": Kind.SENT,
    "delivered": Kind.DELIVERED,
    "undelivered": Kind.UNDELIVERED,
    "failed": Kind.FAILED,
}


# --- SendGrid ----------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _sendgrid_key(public_key_b64: str) -> EllipticCurvePublicKey:
    key = EventWebhook().convert_public_key_to_ecdsa(public_key_b64)
    if not isinstance(key, EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve public key")
    return key


def verify_sendgrid(public_key_b64: str, payload: bytes, signature: str, timestamp: str) -> bool:
    """SendGrid's ECDSA signature over ``timestamp + raw body``, checked by its own helper."""
    if not signature or not timestamp:
        return False
    try:
        key = _sendgrid_key(public_key_b64.strip())
    except (ValueError, TypeError):
        log.error("HERALD_SENDGRID_WEBHOOK_PUBLIC_KEY is not a base64 EC public key")
        return False
    try:
        ok: bool = EventWebhook().verify_signature(
            payload.decode("utf-8"), signature, timestamp, key
        )
    except (UnicodeDecodeError, binascii.Error, ValueError, TypeError):
        return False  # not UTF-8, or a signature that is not base64 DER
    return ok


def sendgrid_observations(events: list[Any]) -> list[Observation]:
    """One observation per event Herald understands; the rest are logged and skipped."""
    out: list[Observation] = []
    skipped: Counter[str] = Counter()
    for event in events:
        name = event.get("event") if isinstance(event, dict) else None
        kind = SENDGRID_KINDS.get(name) if isinstance(name, str) else None
        if kind is None:
            skipped[str(name)] += 1
            continue
        out.append(_sendgrid_observation(event, kind))
    if skipped:
        log.info("sendgrid events skipped (not tracked): %s", dict(skipped))
    return out


def _sendgrid_observation(event: dict[str, Any], kind: Kind) -> Observation:
    message_id = _text(event.get("sg_message_id"))
    # "blocked" is a soft bounce (a refusal that may pass later): no suppression.
    hard_bounce = kind == Kind.BOUNCED and event.get("type") == "bounce"
    return Observation(
        kind,
        Source.SENDGRID,
        delivery_id=_text(event.get(DELIVERY_ARG)),
        provider_message_id=None if message_id is None else message_id.split(".", 1)[0],
        tenant_id=_text(event.get(TENANT_ARG)),
        external_id=(_text(event.get("sg_event_id")) or "")[:255] or None,  # the column's size
        occurred_at=_unix(event.get("timestamp")),
        url=_text(event.get("url")) if kind == Kind.CLICKED else None,
        detail=_sendgrid_detail(event, kind),
        suppress=hard_bounce or kind == Kind.COMPLAINED,
    )


def _sendgrid_detail(event: dict[str, Any], kind: Kind) -> str | None:
    """The bounce, drop or deferral reason, with the SMTP status when it is not in it."""
    if kind not in (Kind.BOUNCED, Kind.FAILED, Kind.DEFERRED):
        return None
    text = _text(event.get("reason")) or _text(event.get("response"))
    status = _text(event.get("status"))
    if status and (text is None or status not in text):
        text = f"{status} {text}" if text else status
    if kind == Kind.BOUNCED and event.get("type") == "blocked":
        text = f"blocked: {text}" if text else "blocked"
    return text


# --- Twilio ------------------------------------------------------------------------


def verify_twilio(auth_token: str, url: str, params: dict[str, str], signature: str) -> bool:
    """``X-Twilio-Signature``: HMAC over the URL Twilio was given plus the sorted form."""
    if not signature:
        return False
    ok: bool = RequestValidator(auth_token).validate(url, params, signature)
    return ok


def twilio_observation(params: dict[str, str], delivery_id: str | None) -> Observation | None:
    """A status callback's meaning; None for the steps before the carrier has the message."""
    status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    kind = TWILIO_KINDS.get(status)
    sid = params.get("MessageSid") or params.get("SmsSid") or None
    if kind is None or sid is None:
        return None
    code = params.get("ErrorCode") or None
    detail = None
    if code is not None:
        detail = f"ErrorCode {code}"
        if params.get("ErrorMessage"):
            detail += f": {params['ErrorMessage']}"
    elif kind in (Kind.UNDELIVERED, Kind.FAILED):
        detail = status
    return Observation(
        kind,
        Source.TWILIO,
        delivery_id=delivery_id or None,
        provider_message_id=sid,
        external_id=f"{sid}:{status}",
        detail=detail,
    )


# --- helpers -----------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def _unix(value: Any) -> datetime | None:
    """SendGrid's ``timestamp`` (unix seconds) as an aware UTC time; None if unreadable."""
    if isinstance(value, bool):
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
