"""Parsing and verifying provider callbacks, with real keys and the providers' helpers."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from twilio.request_validator import RequestValidator

from core.lifecycle import Kind, Source
from core.provider_events import (
    sendgrid_observations,
    twilio_observation,
    verify_sendgrid,
    verify_twilio,
)
from tests.fakes.callbacks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sendgrid_public_key_b64,
    sign_sendgrid_events,
    sign_sendgrid_payload,
)

EVENT = {
    "email": "ada@example.com",
    "timestamp": 1_700_000_000,
    "sg_event_id": "ev-1",
    "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    "herald_delivery_id": "dlv_1",
    "herald_tenant_id": "tenant-a",
}


def one(**fields: object):
    [obs] = sendgrid_observations([{**EVENT, **fields}])
    return obs


# --- SendGrid signature -----------------------------------------------------------


def test_sendgrid_signature_from_the_fake_verifies() -> None:
    body, headers = sign_sendgrid_events([EVENT])

    key = sendgrid_public_key_b64()
    assert verify_sendgrid(key, body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER])


def test_sendgrid_tampered_body_timestamp_or_key_fails() -> None:
    body, headers = sign_sendgrid_events([EVENT])
    sig, ts = headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER]
    key = sendgrid_public_key_b64()
    other = ec.generate_private_key(ec.SECP256R1())
    forged = sign_sendgrid_payload(body, ts, key=other)[SIGNATURE_HEADER]

    assert not verify_sendgrid(key, body.replace(b"dlv_1", b"dlv_2"), sig, ts)
    assert not verify_sendgrid(key, body, sig, str(int(ts) + 1))
    assert not verify_sendgrid(key, body, forged, ts)
    assert not verify_sendgrid(key, body, "", ts)
    assert not verify_sendgrid(key, body, sig, "")
    assert not verify_sendgrid(key, body, "not base64 at all!", ts)
    assert not verify_sendgrid(key, body, base64.b64encode(b"junk").decode(), ts)
    assert not verify_sendgrid(key, b"\xff\xfe" + body, sig, ts)
    assert not verify_sendgrid("bm90IGEga2V5", body, sig, ts)  # a configured key that is junk


# --- SendGrid mapping -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("processed", Kind.PROCESSED),
        ("delivered", Kind.DELIVERED),
        ("deferred", Kind.DEFERRED),
        ("bounce", Kind.BOUNCED),
        ("dropped", Kind.FAILED),
        ("open", Kind.OPENED),
        ("click", Kind.CLICKED),
        ("spamreport", Kind.COMPLAINED),
        ("unsubscribe", Kind.UNSUBSCRIBED),
        ("group_unsubscribe", Kind.UNSUBSCRIBED),
    ],
)
def test_sendgrid_event_kinds(name: str, kind: Kind) -> None:
    obs = one(event=name)

    assert obs.kind == kind
    assert obs.source == Source.SENDGRID
    assert obs.delivery_id == "dlv_1"
    assert obs.tenant_id == "tenant-a"
    assert obs.provider_message_id == "14c5d75ce93"
    assert obs.external_id == "ev-1"
    assert obs.occurred_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert obs.suppress == (name == "spamreport")


def test_hard_bounce_suppresses_and_a_blocked_bounce_does_not() -> None:
    hard = one(event="bounce", type="bounce", status="5.1.1", reason="550 5.1.1 no such user")
    soft = one(event="bounce", type="blocked", status="4.0.0", reason="421 try later")

    assert hard.suppress and hard.detail == "550 5.1.1 no such user"
    assert not soft.suppress and soft.detail == "blocked: 4.0.0 421 try later"


def test_drop_deferral_and_click_carry_their_details() -> None:
    assert one(event="dropped", reason="Bounced Address").detail == "Bounced Address"
    assert one(event="deferred", response="451 4.7.1 greylisted").detail == "451 4.7.1 greylisted"
    click = one(event="click", url="https://example.com/a?b=1")
    assert click.url == "https://example.com/a?b=1" and click.detail is None
    assert one(event="open", url="https://ignored").url is None


def test_unknown_events_and_junk_are_skipped() -> None:
    events = [
        {**EVENT, "event": "delivered"},
        {**EVENT, "event": "machine_open_or_new_thing"},
        {**EVENT},
        "not an object",
        [1, 2],
    ]

    observations = sendgrid_observations(events)

    assert [o.kind for o in observations] == [Kind.DELIVERED]


def test_missing_ids_and_bad_timestamps_give_none() -> None:
    [obs] = sendgrid_observations([{"event": "delivered", "timestamp": "soon"}])

    assert (obs.delivery_id, obs.tenant_id, obs.provider_message_id) == (None, None, None)
    assert obs.external_id is None and obs.occurred_at is None


def test_a_real_batch_round_trips_through_json() -> None:
    events = [{**EVENT, "event": "open", "sg_event_id": f"ev-{i}"} for i in range(3)]
    body, _ = sign_sendgrid_events(events)

    observations = sendgrid_observations(json.loads(body))

    assert [o.external_id for o in observations] == ["ev-0", "ev-1", "ev-2"]


# --- Twilio -----------------------------------------------------------------------

URL = "https://herald.example.com/v1/providers/twilio/status?delivery=dlv_1"
PARAMS = {"MessageSid": "SM123", "MessageStatus": "delivered", "AccountSid": "AC1", "To": "+1"}


def test_twilio_signature_round_trip_and_forgeries() -> None:
    sig = RequestValidator("token").compute_signature(URL, PARAMS)

    assert verify_twilio("token", URL, PARAMS, sig)
    assert not verify_twilio("other-token", URL, PARAMS, sig)
    assert not verify_twilio("token", URL.replace("dlv_1", "dlv_2"), PARAMS, sig)
    assert not verify_twilio("token", URL, {**PARAMS, "MessageStatus": "failed"}, sig)
    assert not verify_twilio("token", URL, PARAMS, "")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("sent", Kind.SENT),
        ("delivered", Kind.DELIVERED),
        ("undelivered", Kind.UNDELIVERED),
        ("failed", Kind.FAILED),
    ],
)
def test_twilio_statuses(status: str, kind: Kind) -> None:
    obs = twilio_observation({**PARAMS, "MessageStatus": status}, "dlv_1")

    assert obs is not None
    assert (obs.kind, obs.source) == (kind, Source.TWILIO)
    assert obs.delivery_id == "dlv_1"
    assert obs.provider_message_id == "SM123"
    assert obs.external_id == f"SM123:{status}"


def test_twilio_error_code_is_the_detail() -> None:
    obs = twilio_observation({**PARAMS, "MessageStatus": "undelivered", "ErrorCode": "30003"}, None)

    assert obs is not None
    assert obs.detail == "ErrorCode 30003"
    assert obs.delivery_id is None


@pytest.mark.parametrize("status", ["queued", "sending", "accepted", "scheduled", "", "read"])
def test_twilio_steps_before_the_carrier_are_ignored(status: str) -> None:
    assert twilio_observation({**PARAMS, "MessageStatus": status}, "dlv_1") is None
