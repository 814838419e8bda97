"""``herald send``: post an event through the API, as an application would (e.g. to test a flow)."""

from __future__ import annotations

import json
from typing import Any

import typer

from cli.api import api
from cli.common import JSON_OPTION, fail, print_json, print_table
from store.models import EventAccepted

TO_OPTION = typer.Option(..., "--to", help="A subscriber id; repeat for more.")


def send(
    event_type: str = typer.Argument(..., metavar="TYPE", help="The event type, e.g. user.signup."),
    to: list[str] = TO_OPTION,
    data: str = typer.Option("{}", "--data", help="The event data as a JSON object: '{\"k\": 1}'."),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Sending again with the same key is a no-op."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Post an event (POST /v1/events); prints its id, then its notifications' workflow ids."""
    body: dict[str, Any] = {"type": event_type, "to": to, "data": _object(data)}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    with api() as client:
        response = client.call("POST", "/v1/events", json=body, headers=headers)
    accepted = EventAccepted.model_validate_json(response.content)
    if as_json:
        print_json(accepted)
        return
    typer.echo(accepted.id)  # alone on the first line: EVENT=$(herald send … | head -1)
    if response.status_code == 200:
        typer.echo("this idempotency key was used before: that event, not a new one", err=True)
    if not accepted.notifications:
        typer.echo(f"no flow handles {event_type!r}: nothing will be sent", err=True)
        return
    print_table(
        ("NOTIFICATION", "FLOW", "SUBSCRIBER", "WORKFLOW"),
        [(n.id, n.flow, n.subscriber_id, n.workflow_id) for n in accepted.notifications],
    )


def _object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        fail(f"--data: not JSON: {exc}", code=2)
    if not isinstance(value, dict):
        fail('--data: must be a JSON object, e.g. \'{"plan": "pro"}\'', code=2)
    return value
