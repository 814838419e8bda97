"""``herald migrate``: the one way the schema is made or changed."""

from __future__ import annotations

import typer

from cli.common import load_settings
from store.db import make_engine
from store.schema import migrate as upgrade


def migrate() -> None:
    """Upgrade the database to this Herald's schema (safe to run from several hosts at once)."""
    engine = make_engine(load_settings().database_url)
    try:
        revision = upgrade(engine)
    finally:
        engine.dispose()
    typer.echo(f"database at revision {revision}")
