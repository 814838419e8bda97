"""The schema is made and changed only by Alembic migrations (store/migrations).

``herald migrate`` (and ``make run``) upgrades; the API, the worker and the consumer only
check, and refuse to start on a database behind their code. A database made by
``create_all`` before migrations existed is recognised and stamped at the baseline first.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"
# Any constant shared by every Herald process: concurrent `migrate` runs queue on it.
_PG_LOCK = 0x48455241  # "HERA"


class SchemaOutdatedError(RuntimeError):
    """The database is behind this code: run ``herald migrate``."""


def metadata() -> MetaData:
    """Every table Herald has, for migrations and their autogenerate check."""
    from store import (  # noqa: F401  (tables)
        api_keys,
        broadcasts,
        engagement,
        erasure,
        models,
        outbox,
        rollups,
        status_stream,
        topics,
        webhook_secrets,
    )

    return SQLModel.metadata


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: Engine) -> str:
    """Upgrade to the newest revision; returns it. Safe to run from several processes."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        config = alembic_config(connection)
        if current(connection) is None and inspect(connection).has_table("events"):
            log.info("a database from before migrations: stamping it at the baseline")
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")
        return head()


def require_current(engine: Engine) -> None:
    """Refuse to run on a schema behind (or ahead of) this code, naming the fix."""
    with engine.connect() as connection:
        have = current(connection)
    want = head()
    if have != want:
        raise SchemaOutdatedError(
            f"the database schema is at revision {have or 'none'}, this Herald needs {want}: "
            "run `herald migrate` (make run does it for you)"
        )
