"""``herald events show``: an event, its notifications and every delivery's status and reason."""

from __future__ import annotations

import json

import typer

from cli.api import api, flat, when
from cli.common import JSON_OPTION, print_json, print_table
from store.models import EventPublic

app = typer.Typer(help="Look at stored events.", no_args_is_help=True)


@app.command()
def show(
    event_id: str = typer.Argument(
        ..., metavar="ID", help="The event's id (herald send prints it)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """The event (GET /v1/events/ID), each notification, each delivery with provider and reason."""
    with api() as client:
        event = client.get(f"/v1/events/{event_id}", EventPublic)
    if as_json:
        print_json(event)
        return
    typer.echo(f"event       {event.id}  {event.type}")
    typer.echo(f"received    {when(event.received_at)} UTC")
    dispatched = when(event.dispatched_at) + " UTC" if event.dispatched_at else "not yet"
    if event.dispatch_given_up_at is not None:
        dispatched = f"given up at {when(event.dispatch_given_up_at)} UTC"
    if event.dispatch_attempts:
        dispatched += f" ({event.dispatch_attempts} refused: {flat(event.dispatch_error, 120)})"
    typer.echo(f"dispatched  {dispatched}")
    typer.echo(f"data        {flat(json.dumps(event.data), 120)}")
    if not event.notifications:
        typer.echo("no notifications: no flow handled this event")
        return
    typer.echo("")
    print_table(
        ("NOTIFICATION", "FLOW", "SUBSCRIBER", "STATUS", "WORKFLOW"),
        [
            (
                n.id,
                n.flow,
                n.subscriber_id,
                n.status + (f" ({flat(n.stop_reason, 60)})" if n.stop_reason else ""),
                n.workflow_id,
            )
            for n in event.notifications
        ],
    )
    deliveries = [(n, d) for n in event.notifications for d in n.deliveries]
    if not deliveries:
        return
    typer.echo("")
    print_table(
        ("DELIVERY", "NOTIFICATION", "CHANNEL", "STATUS", "PROVIDER", "ATTEMPTS", "REASON"),
        [
            (
                d.id,
                n.id,
                d.channel,
                d.status,
                d.provider or "-",
                str(d.attempts),
                flat(d.reason, 160) or "-",
            )
            for n, d in deliveries
        ],
    )
