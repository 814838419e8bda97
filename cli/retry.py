"""``herald retry``: ask failed notifications to re-attempt their failed deliveries.

Only failed deliveries are sent again, never sent ones; a notification whose dead-letter
retention has passed is closed and says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

from cli.api import api, iso, parse_time
from cli.common import JSON_OPTION, fail, print_json
from cli.deliveries import CHANNEL_OPTION, FLOW_OPTION, SINCE_OPTION
from core.types import Channel
from store.models import RetryAccepted


def retry(
    notification_id: str | None = typer.Argument(
        None, metavar="[NOTIFICATION_ID]", help="One notification (herald deliveries failed)."
    ),
    every: bool = typer.Option(
        False, "--all", help="Every failed delivery that matches --channel, --flow, --since."
    ),
    channel: Channel | None = CHANNEL_OPTION,
    flow: str | None = FLOW_OPTION,
    since: str | None = SINCE_OPTION,
    limit: int | None = typer.Option(
        None, "--limit", min=1, max=5000, help="With --all: at most this many deliveries (500)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Retry one notification's failed deliveries, or with --all every matching one."""
    if every == (notification_id is not None):
        fail("give a NOTIFICATION_ID or --all (not both)", code=2)
    if notification_id is not None:
        given = [o for o, v in (("--flow", flow), ("--since", since), ("--limit", limit)) if v]
        if given:
            fail(f"{', '.join(given)}: only with --all", code=2)
        _retry_one(notification_id, channel, as_json)
        return
    body: dict[str, Any] = {
        "channel": None if channel is None else channel.value,
        "flow": flow,
        "since": iso(parse_time(since, "--since")),
    }
    if limit is not None:
        body["limit"] = limit
    with api() as client, working("Asking failed notifications to retry…"):
        accepted = client.post("/v1/deliveries/retry", RetryAccepted, json=body)
    if as_json:
        print_json(accepted)
        return
    count = len(accepted.notifications)
    if not count:
        typer.echo("no open notification has a matching failed delivery")
        return
    typer.echo(f"retrying the failed deliveries of {count} notification{'s' * (count != 1)}")
    for nid in accepted.notifications:
        typer.echo(f"  {nid}")


def _retry_one(notification_id: str, channel: Channel | None, as_json: bool) -> None:
    body = None if channel is None else {"channel": channel.value}
    with api() as client:
        accepted = client.post(f"/v1/notifications/{notification_id}/retry", RetryAccepted, body)
    if as_json:
        print_json(accepted)
        return
    which = "" if channel is None else f" {channel.value}"
    typer.echo(f"retrying the failed{which} deliveries of {notification_id}")


@contextmanager
def working(message: str) -> Iterator[None]:
    """A spinner on a terminal's stderr while one long call runs; nothing in scripts."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    with console.status(message):
        yield
