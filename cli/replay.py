"""``herald replay``: run stored events through today's flow again, a batch of events at a time.

The API replays at most ``limit`` events per call, oldest first. The command walks the
window in batches under one replay id, starting each batch at the last event seen (the
API's ``since`` is inclusive): that event's pairs come back as already replayed and are
counted once. Repeating the command with the same ``--replay-id`` starts nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cli.api import Api, api, iso, parse_time
from cli.common import JSON_OPTION, fail, print_json
from core.types import new_id
from store.models import EventPublic, ReplayItem, ReplayResult


@dataclass
class Tally:
    """What the batches added up to, each (event, flow, subscriber) pair counted once."""

    started: int = 0
    items: dict[str, ReplayItem] = field(default_factory=dict)  # by workflow id
    events: set[str] = field(default_factory=set)

    def add(self, result: ReplayResult) -> None:
        self.started += result.started
        for item in result.items:
            self.items.setdefault(item.workflow_id, item)
            self.events.add(item.event_id)

    @property
    def already(self) -> int:
        return sum(i.already_replayed for i in self.items.values())


def replay(
    flow: str = typer.Option(..., "--flow", help="The flow to run the events through."),
    event_type: str | None = typer.Option(
        None, "--type", help="Only this event type (must be the flow's)."
    ),
    since: str = typer.Option(
        ..., "--since", help="Events received from this ISO 8601 time on (UTC if no offset)."
    ),
    until: str | None = typer.Option(None, "--until", help="Events received before this time."),
    replay_id: str | None = typer.Option(
        None, "--replay-id", help="Name the replay; repeating it starts nothing twice."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would start; start none."),
    batch_size: int = typer.Option(
        200, "--batch-size", min=1, max=10000, help="Events per API call."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Replay stored events through a flow (POST /v1/events/replay), e.g. one added this week."""
    start = parse_time(since, "--since")
    end = parse_time(until, "--until")
    if start is not None and end is not None and end <= start:
        fail("--until must be after --since", code=2)
    rid = replay_id or new_id("rpl")
    body: dict[str, Any] = {
        "flow": flow,
        "type": event_type,
        "until": iso(end),
        "replay_id": rid,
        "dry_run": dry_run,
        "limit": batch_size,
    }
    tally = Tally()
    with api() as client, _progress(dry_run) as progress:
        task = progress.add_task("", total=None)
        cursor = start
        while True:
            result = client.post("/v1/events/replay", ReplayResult, {**body, "since": iso(cursor)})
            tally.add(result)
            progress.update(task, description=_line(tally, dry_run))
            if not result.items:
                break
            following = _received_at(client, result.items[-1].event_id)
            if following == cursor:
                # The whole batch was the last event's time: end, or cannot move on.
                if len({i.event_id for i in result.items}) >= batch_size:
                    fail(
                        f"more than {batch_size} events were received at {iso(cursor)}: "
                        "repeat with a larger --batch-size and the same --replay-id",
                    )
                break
            cursor = following
    summary = ReplayResult(
        replay_id=rid, dry_run=dry_run, started=tally.started, items=list(tally.items.values())
    )
    if as_json:
        print_json(summary)
        return
    typer.echo(f"replay {rid}: {_line(tally, dry_run)}")
    if not dry_run and tally.started:
        typer.echo(f"follow them with: herald deliveries failed --flow {flow} --since {since}")


def _line(tally: Tally, dry_run: bool) -> str:
    new = len(tally.items) - tally.already
    doing = f"would start {new}" if dry_run else f"started {tally.started}"
    return (
        f"{len(tally.events)} events, {len(tally.items)} notifications: "
        f"{doing}, {tally.already} already replayed"
    )


def _received_at(client: Api, event_id: str) -> datetime:
    return client.get(f"/v1/events/{event_id}", EventPublic).received_at


def _progress(dry_run: bool) -> Progress:
    """Live counts on a terminal's stderr; scripts see only the summary."""
    console = Console(stderr=True)
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]dry run[/] " if dry_run else "replaying "),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
