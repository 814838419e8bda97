"""Engine and sessions that behave under concurrent API and worker writers."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel, create_engine

from core.metrics import count_statements

log = logging.getLogger(__name__)


def make_engine(url: str, *, echo: bool = False, pool: tuple[int, int] | None = None) -> Engine:
    """``pool`` is (size, overflow) for a small engine of its own, e.g. the API key lookups."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        size, overflow = pool or (10, 20)
        engine = create_engine(
            url,
            echo=echo,
            pool_pre_ping=True,
            pool_size=size,
            max_overflow=overflow,
            pool_recycle=1800,
        )
    else:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        sized = {} if pool is None else {"pool_size": pool[0], "max_overflow": pool[1]}
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}, **sized
        )
        _configure_sqlite(engine)
    count_statements(engine)
    return engine


READ_ONLY = "herald_read_only"
_BUSY_TIMEOUT_MS = 30_000


def _configure_sqlite(engine: Engine) -> None:
    """WAL for concurrent readers; prompt, fair hand-off of the single write lock.

    Write transactions take the lock at BEGIN (IMMEDIATE): a deferred one that
    reads and then writes fails with SQLITE_BUSY, without waiting, when another
    process committed in between. Waiting for that lock is done here rather
    than by SQLite's busy handler, which sleeps up to 100 ms between tries and
    made tail latency under load a matter of luck: writers in this process
    queue on a lock, and the retry against other processes polls every
    millisecond. Read-only sessions (``read_scope``) begin deferred and never wait.
    """
    write_lock = threading.Lock()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let us issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
            return
        if not write_lock.acquire(timeout=_BUSY_TIMEOUT_MS / 1000):
            raise TimeoutError("timed out waiting for the database write lock")
        conn.info["herald_write_lock"] = True
        try:
            _begin_immediate(conn.connection.dbapi_connection)
        except BaseException:
            _release(conn)
            raise

    @event.listens_for(engine, "commit")
    def _on_commit(conn: Any) -> None:
        _release(conn)

    @event.listens_for(engine, "rollback")
    def _on_rollback(conn: Any) -> None:
        _release(conn)

    def _release(conn: Any) -> None:
        if conn.info.pop("herald_write_lock", False):
            write_lock.release()


def _begin_immediate(dbapi_conn: Any) -> None:
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA busy_timeout=0")
        while True:
            try:
                cur.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
    finally:
        cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        cur.close()


def table(model: type[SQLModel]) -> Table:
    """The model's Core table: bulk writes through it skip the ORM's per-row bookkeeping."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


def dialect_insert(session: Session) -> Any:
    """PostgreSQL's or SQLite's ``insert``, both of which have ``on_conflict_do_*``."""
    return insert_for(session.get_bind().dialect.name)


def insert_for(dialect: str) -> Any:
    return pg_insert if dialect == "postgresql" else sqlite_insert


@contextmanager
def read_scope(engine: Engine) -> Iterator[Session]:
    """A read-only transaction: on SQLite it never queues behind writers."""
    with engine.connect() as conn:
        conn.execution_options(**{READ_ONLY: True})
        with Session(bind=conn, expire_on_commit=False) as session:
            yield session


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
