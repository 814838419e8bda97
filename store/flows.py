from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col, select

from store.models import Flow, FlowExit, utcnow


def get_flow(session: Session, tenant_id: str, key: str) -> Flow | None:
    return session.get(Flow, (tenant_id, key))


def put_flow(session: Session, tenant_id: str, key: str, values: dict[str, Any]) -> Flow:
    """Upsert; each change bumps ``version`` so a workflow's snapshot names what it ran."""
    row = get_flow(session, tenant_id, key)
    if row is None:
        row = Flow(tenant_id=tenant_id, key=key, **values)
    else:
        for name, value in values.items():
            setattr(row, name, value)
        row.version += 1
        row.updated_at = utcnow()
    session.add(row)
    session.flush()
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


def exiting_flows(session: Session, tenant_id: str, event_type: str) -> list[str]:
    """Keys of the flows whose running notifications this event type ends."""
    stmt = select(FlowExit.flow_key).where(
        FlowExit.tenant_id == tenant_id, FlowExit.event_type == event_type
    )
    return list(session.exec(stmt).all())


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
    stmt = (
        select(Flow)
        .where(Flow.tenant_id == tenant_id, Flow.event_type == event_type)
        .order_by(col(Flow.key))
    )
    return list(session.exec(stmt).all())
