"""Alembic environment: run through ``store.schema`` (``herald migrate``), on its connection."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlalchemy.types import TypeDecorator

from store.schema import metadata


def render_item(kind: str, obj: Any, _ctx: Any) -> str | Literal[False]:
    """Plain SQLAlchemy types in revisions, so none imports Herald's code, which changes."""
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata(),
    # SQLite alters tables by copying them; PostgreSQL alters in place.
    render_as_batch=connection.dialect.name == "sqlite",
    render_item=render_item,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
