"""What every ``herald`` command shares: settings, the database, output for people and scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session

from core.settings import Settings, get_settings
from store.db import make_engine, session_scope
from store.schema import SchemaOutdatedError, require_current

JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts instead of text.")


def load_settings() -> Settings:
    """The process's settings (HERALD_* variables); a bad value is one line, not a traceback."""
    try:
        return get_settings()
    except ValidationError as exc:
        fail(settings_error(exc))


def settings_error(exc: ValidationError) -> str:
    """A settings validation error on one line, each bad value named by its variable."""
    return "invalid settings: " + "; ".join(_one_line(e) for e in exc.errors())


@contextmanager
def database() -> Iterator[Engine]:
    """The configured database, refused (naming `herald migrate`) when its schema is behind."""
    engine = make_engine(load_settings().database_url)
    try:
        try:
            require_current(engine)
        except SchemaOutdatedError as exc:
            fail(str(exc))
        yield engine
    finally:
        engine.dispose()


@contextmanager
def transaction() -> Iterator[Session]:
    with database() as engine, session_scope(engine) as session:
        yield session


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"herald: {message}", err=True)
    raise typer.Exit(code)


def print_json(value: BaseModel | Sequence[BaseModel]) -> None:
    data: Any = (
        value.model_dump(mode="json")
        if isinstance(value, BaseModel)
        else [v.model_dump(mode="json") for v in value]
    )
    typer.echo(json.dumps(data, indent=2))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _one_line(error: Any) -> str:
    where = ".".join(str(p) for p in error.get("loc", ())) or "settings"
    name = f"HERALD_{where.upper()}" if where != "settings" else where
    return f"{name}: {error.get('msg', '')}"
