from __future__ import annotations

import hashlib

from sqlmodel import Session, col, select

from core.types import new_id
from store.models import ApiKey, Tenant


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_api_keys(session: Session, key_map: dict[str, str]) -> None:
    """Make sure every configured key and its tenant exist; keys are stored hashed only."""
    for key, tenant_id in key_map.items():
        if session.get(Tenant, tenant_id) is None:
            session.add(Tenant(id=tenant_id))
            session.flush()
        digest = hash_key(key)
        existing = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        if existing is None:
            session.add(ApiKey(id=new_id("key"), tenant_id=tenant_id, key_hash=digest))
        elif existing.tenant_id != tenant_id:
            existing.tenant_id = tenant_id
            session.add(existing)


def tenant_for_key(session: Session, key: str) -> str | None:
    row = session.exec(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key))).first()
    return row


def unknown_tenants(session: Session, tenants: list[str]) -> list[str]:
    """Which of ``tenants`` Herald has no record of, in the order given."""
    known = set(session.exec(select(Tenant.id).where(col(Tenant.id).in_(tenants))).all())
    return [t for t in tenants if t not in known]
