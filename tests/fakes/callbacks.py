"""The fake provider calling Herald back: signed SendGrid events, signed Twilio callbacks.

Real crypto, as the providers do it: SendGrid signs ``timestamp + payload`` with an
ECDSA P-256 key (base64 DER signature), Twilio HMACs the callback URL plus the sorted
form with the account's auth token. The events echo what Herald sent to the fake
(custom args, the message ids the fake answered with, the StatusCallback URL).
"""

from __future__ import annotations

import base64
import functools
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twilio.request_validator import RequestValidator

if TYPE_CHECKING:
    from tests.fakes.provider import Recorded

TWILIO_AUTH_TOKEN = "twilio-test-token"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# Realistic fields per event type; a test's own fields win.
_SENDGRID_DEFAULTS: dict[str, dict[str, Any]] = {
    "bounce": {
        "type": "bounce",
        "status": "5.1.1",
        "reason": "550 5.1.1 The email account that you tried to reach does not exist",
    },
    "dropped": {"reason": "Bounced Address"},
    "deferred": {"response": "451 4.7.1 Try again later", "attempt": "1"},
    "open": {"useragent": "Mozilla/5.0", "ip": "192.0.2.1", "sg_machine_open": False},
    "click": {"useragent": "Mozilla/5.0", "ip": "192.0.2.1"},
    "group_unsubscribe": {"asm_group_id": 42},
}


@functools.lru_cache(maxsize=1)
def sendgrid_private_key() -> ec.EllipticCurvePrivateKey:
    """One P-256 key pair per test process."""
    return ec.generate_private_key(ec.SECP256R1())


def sendgrid_public_key_b64() -> str:
    """The verification key as SendGrid shows it: base64 DER SubjectPublicKeyInfo."""
    der = (
        sendgrid_private_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(der).decode()


def sign_sendgrid_payload(
    payload: bytes, timestamp: str | None = None, key: ec.EllipticCurvePrivateKey | None = None
) -> dict[str, str]:
    """The two headers SendGrid sends: a signature over ``timestamp + payload``."""
    timestamp = timestamp or str(int(time.time()))
    signer = key or sendgrid_private_key()
    signature = signer.sign(timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    return {
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        TIMESTAMP_HEADER: timestamp,
        "Content-Type": "application/json",
    }


def sign_sendgrid_events(events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    """A signed Event Webhook batch: the raw body and the headers to post it with."""
    body = json.dumps(events).encode()
    return body, sign_sendgrid_payload(body)


def sendgrid_event_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def sendgrid_events_for(recorded: Recorded, *events: str | dict[str, Any]) -> list[dict[str, Any]]:
    """Events about the mail in ``recorded``, as SendGrid would post them.

    Each item is an event name or a dict with at least ``event``; every event gets its
    own ``sg_event_id``, the mail's custom args, its address and the fake's message id.
    """
    mail = recorded.json if isinstance(recorded.json, dict) else {}
    custom_args: dict[str, Any] = dict(mail.get("custom_args") or {})
    personalization = (mail.get("personalizations") or [{}])[0]
    custom_args.update(personalization.get("custom_args") or {})
    email = (personalization.get("to") or [{}])[0].get("email")
    message_id = recorded.message_id or "unknown"
    out = []
    for item in events:
        fields = {"event": item} if isinstance(item, str) else dict(item)
        event: dict[str, Any] = {
            "email": email,
            "timestamp": int(time.time()),
            "smtp-id": f"<{message_id}@ismtpd0001p1las1.sendgrid.net>",
            "sg_event_id": sendgrid_event_id(),
            "sg_message_id": f"{message_id}.filterdrecv-5bd7cd5b88-xk8qz-1-0-0",
            "category": [],
            **custom_args,
            **_SENDGRID_DEFAULTS.get(fields["event"], {}),
            **fields,
        }
        out.append(event)
    return out


def twilio_callback(
    recorded: Recorded, status: str, error_code: int | str | None = None
) -> tuple[str, dict[str, str], dict[str, str]]:
    """(URL, form, headers) of Twilio's status callback for the SMS in ``recorded``.

    The URL is the StatusCallback Herald sent; the signature is the real one, computed
    with the SDK's ``RequestValidator`` and the auth token the fake accepts.
    """
    url = recorded.form["StatusCallback"]
    sid = recorded.message_id or "SM" + uuid.uuid4().hex
    account = recorded.path.split("/")[3] if recorded.path.count("/") >= 3 else ""
    params = {
        "AccountSid": account,
        "ApiVersion": "2010-04-01",
        "From": recorded.form.get("From", ""),
        "To": recorded.form.get("To", ""),
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
    }
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
    signature = RequestValidator(TWILIO_AUTH_TOKEN).compute_signature(url, params)
    headers = {
        "X-Twilio-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
        "I-Twilio-Idempotency-Token": uuid.uuid4().hex,
    }
    return url, params, headers
