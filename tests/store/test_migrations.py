"""Migrations make the schema: it matches the models, old ones upgrade, stale ones are refused."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from store.db import make_engine
from store.schema import (
    BASELINE,
    SchemaOutdatedError,
    alembic_config,
    head,
    metadata,
    migrate,
    require_current,
)


def schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata()))


def test_the_migrated_schema_is_exactly_the_models(engine: Engine) -> None:
    """Run on SQLite and on PostgreSQL: a model change without a revision fails here."""
    assert schema_diff(engine) == []
    require_current(engine)


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'herald.db'}")
    yield engine
    engine.dispose()


def _baseline_without_alembic(engine: Engine) -> None:
    """What `make run` left in .herald/herald.db before migrations: create_all, no version."""
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))


def test_a_database_from_before_migrations_upgrades_in_place(sqlite_file: Engine) -> None:
    _baseline_without_alembic(sqlite_file)
    with sqlite_file.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, created_at) VALUES ('acme', '2026-01-01')"))
    with pytest.raises(SchemaOutdatedError, match="herald migrate"):
        require_current(sqlite_file)

    assert migrate(sqlite_file) == head()

    require_current(sqlite_file)
    assert schema_diff(sqlite_file) == []
    with sqlite_file.connect() as conn:
        assert conn.execute(text("SELECT id FROM tenants")).scalars().all() == ["acme"]
    assert migrate(sqlite_file) == head()  # again: nothing to do


def test_a_stale_schema_is_refused_naming_the_command(sqlite_file: Engine) -> None:
    with sqlite_file.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
    with pytest.raises(SchemaOutdatedError, match=rf"at revision {BASELINE}.*herald migrate"):
        require_current(sqlite_file)
    with pytest.raises(SchemaOutdatedError, match="revision none"):
        require_current(
            make_engine(f"sqlite:///{Path(str(sqlite_file.url.database)).parent / 'empty.db'}")
        )


def test_concurrent_migrations_on_postgresql_take_turns(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("the advisory lock is PostgreSQL's; SQLite's writer lock serializes anyway")
    name = f"herald_migrate_{uuid.uuid4().hex[:8]}"
    admin = make_engine(database_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    fresh = make_engine(url.set(database=name).render_as_string(hide_password=False))
    try:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                migrate(fresh)
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert schema_diff(fresh) == []
    finally:
        fresh.dispose()
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE "{name}"'))
        admin.dispose()
