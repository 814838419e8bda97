"""API and worker are separate processes writing the same database at the same time."""

from __future__ import annotations

import multiprocessing as mp

from sqlalchemy import func
from sqlmodel import Session, select

from store.db import make_engine, session_scope
from store.models import Subscriber
from store.subscribers import upsert_subscriber
from tests.conftest import unique


def _writer(url: str, tenant: str, worker: int, n: int) -> None:
    engine = make_engine(url)
    for i in range(n):
        with session_scope(engine) as session:
            # Read-then-write in one transaction: the pattern that deadlocks naive SQLite.
            upsert_subscriber(session, tenant, f"s{i % 10}", {"name": f"w{worker}-{i}"})
            upsert_subscriber(session, tenant, f"w{worker}-{i}", {"locale": "en"})
    engine.dispose()


def test_concurrent_writer_processes_all_commit(database_url: str, engine: object) -> None:
    tenant = unique("tenant")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(database_url, tenant, w, 60)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with Session(make_engine(database_url)) as s:
        total = s.exec(
            select(func.count()).select_from(Subscriber).where(Subscriber.tenant_id == tenant)
        ).one()
    assert total == 10 + 4 * 60
