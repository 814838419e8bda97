"""``herald deliveries failed``: the dead letters, newest first, with why each one failed."""

from __future__ import annotations

import typer

from cli.api import api, flat, iso, parse_time, when
from cli.common import JSON_OPTION, print_json, print_table
from core.types import Channel
from store.models import DeadLetterPublic

app = typer.Typer(help="Look at deliveries.", no_args_is_help=True)

CHANNEL_OPTION = typer.Option(None, "--channel", help="Only this channel.", case_sensitive=False)
FLOW_OPTION = typer.Option(None, "--flow", help="Only this flow's notifications.")
SINCE_OPTION = typer.Option(
    None, "--since", help="Only those that failed from this ISO 8601 time on (UTC if no offset)."
)


@app.command()
def failed(
    channel: Channel | None = CHANNEL_OPTION,
    flow: str | None = FLOW_OPTION,
    since: str | None = SINCE_OPTION,
    limit: int = typer.Option(100, "--limit", min=1, max=1000, help="At most this many."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Failed deliveries (GET /v1/deliveries?status=failed); `herald retry` re-attempts them."""
    params = {
        "status": "failed",
        "channel": None if channel is None else channel.value,
        "flow": flow,
        "since": iso(parse_time(since, "--since")),
        "limit": limit,
    }
    with api() as client:
        rows = client.get_list("/v1/deliveries", DeadLetterPublic, **params)
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no failed deliveries", err=True)
        return
    print_table(
        (
            "DELIVERY",
            "NOTIFICATION",
            "CHANNEL",
            "FLOW",
            "SUBSCRIBER",
            "PROVIDER",
            "ATTEMPTS",
            "FAILED",
            "REASON",
        ),
        [
            (
                r.delivery_id,
                r.notification_id,
                r.channel,
                r.flow,
                r.subscriber_id,
                r.provider or "-",
                str(r.attempts),
                when(r.updated_at),
                flat(r.reason, 160) or "-",
            )
            for r in rows
        ],
    )
