from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from store.db import dialect_insert, table
from store.models import Flow, FlowExit, utcnow


def get_flow(session: Session, tenant_id: str, key: str) -> Flow | None:
    return session.get(Flow, (tenant_id, key))


def put_flow(session: Session, tenant_id: str, key: str, values: dict[str, Any]) -> Flow:
    """Upsert; each change bumps ``version`` so a workflow's snapshot names what it ran.

    One INSERT ... ON CONFLICT DO UPDATE, so concurrent PUTs of a new key all succeed
    (a read-then-insert raced into an IntegrityError); the row lock it takes also keeps
    the exit rows of two writers from interleaving.
    """
    fresh = Flow(tenant_id=tenant_id, key=key, **values)
    flows = table(Flow)
    stmt = dialect_insert(session)(flows).values(
        **{c.name: getattr(fresh, c.name) for c in flows.columns}
    )
    update = {name: stmt.excluded[name] for name in values}
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenant_id", "key"],
        set_={**update, "version": flows.c.version + 1, "updated_at": utcnow()},
    )
    session.execute(stmt)
    row = session.get(Flow, (tenant_id, key), populate_existing=True)
    assert row is not None
    _set_exits(session, tenant_id, key, row.exit_on or [])
    return row


def _set_exits(session: Session, tenant_id: str, key: str, event_types: list[str]) -> None:
    session.execute(
        delete(FlowExit).where(col(FlowExit.tenant_id) == tenant_id, col(FlowExit.flow_key) == key)
    )
    session.add_all(
        FlowExit(tenant_id=tenant_id, event_type=t, flow_key=key)
        for t in dict.fromkeys(event_types)
    )


# Both read for every accepted event (or group commit), so they are built once, not per
# call; see store.subscribers._EXISTING.
_EXITS = table(FlowExit)
_EXITING = sa_select(_EXITS.c.flow_key).where(
    _EXITS.c.tenant_id == bindparam("tenant"), _EXITS.c.event_type == bindparam("type")
)
_FOR_EVENT = (
    select(Flow)
    .where(col(Flow.tenant_id) == bindparam("tenant"), col(Flow.event_type) == bindparam("type"))
    .order_by(col(Flow.key))
)


def exiting_flows(session: Session, tenant_id: str, event_type: str) -> list[str]:
    """Keys of the flows whose running notifications this event type ends."""
    return list(session.execute(_EXITING, {"tenant": tenant_id, "type": event_type}).scalars())


def list_flows(session: Session, tenant_id: str) -> list[Flow]:
    stmt = select(Flow).where(Flow.tenant_id == tenant_id).order_by(col(Flow.key))
    return list(session.exec(stmt).all())


def delete_flow(session: Session, tenant_id: str, key: str) -> bool:
    row = get_flow(session, tenant_id, key)
    if row is None:
        return False
    session.delete(row)
    _set_exits(session, tenant_id, key, [])
    return True


def flows_for_event(session: Session, tenant_id: str, event_type: str) -> list[Flow]:
    return list(session.exec(_FOR_EVENT, params={"tenant": tenant_id, "type": event_type}).all())
