"""The ``herald`` console script. Each command group is a Typer sub-app added here."""

from __future__ import annotations

import typer

from cli import keys
from cli.migrate import migrate

app = typer.Typer(
    name="herald",
    help="Operate Herald. Settings come from HERALD_* variables, as for the API and worker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(keys.app, name="keys")
app.command()(migrate)


@app.callback()
def main() -> None:
    # A callback keeps `herald keys ...` a group even while it is the only one.
    pass


if __name__ == "__main__":
    app()
