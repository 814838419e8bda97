"""The ``herald`` console script. Each command group is a Typer sub-app added here."""

from __future__ import annotations

import typer

from cli import deliveries, events, keys
from cli.doctor import doctor
from cli.migrate import migrate
from cli.replay import replay
from cli.retry import retry
from cli.send import send

app = typer.Typer(
    name="herald",
    help="Operate Herald. Settings come from HERALD_* variables, as for the API and worker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(keys.app, name="keys")
app.command()(migrate)
app.command()(doctor)
# These act as a tenant through the API: HERALD_URL and HERALD_KEY (cli/api.py).
app.command()(send)
app.add_typer(events.app, name="events")
app.add_typer(deliveries.app, name="deliveries")
app.command()(retry)
app.command()(replay)


@app.callback()
def main() -> None:
    # A callback keeps `herald keys ...` a group even while it is the only one.
    pass


if __name__ == "__main__":
    app()
