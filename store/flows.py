from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from store.models import Flow, utcnow


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
    return row


def list_flows(session: Session, tenant_id: str) -> list[Flow]:
    stmt = select(Flow).where(Flow.tenant_id == tenant_id).order_by(col(Flow.key))
    return list(session.exec(stmt).all())


def delete_flow(session: Session, tenant_id: str, key: str) -> bool:
    row = get_flow(session, tenant_id, key)
    if row is None:
        return False
    session.delete(row)
    return True


def flows_for_event(session: Session, tenant_id: str, event_type: str) -> list[Flow]:
    stmt = (
        select(Flow)
        .where(Flow.tenant_id == tenant_id, Flow.event_type == event_type)
        .order_by(col(Flow.key))
    )
    return list(session.exec(stmt).all())
