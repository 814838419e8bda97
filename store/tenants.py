"""Tenants: created by their first API key (HERALD_API_KEYS, the CLI or the admin API)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from store.api_keys import hash_key, seed_api_keys
from store.models import Tenant

__all__ = ["ensure_api_keys", "hash_key", "unknown_tenants"]


def ensure_api_keys(session: Session, key_map: dict[str, str]) -> None:
    """Make sure every ``{key: tenant}`` exists, revoking nothing (see ``seed_api_keys``)."""
    seed_api_keys(session, key_map, revoke_unlisted=False)


def unknown_tenants(session: Session, tenants: list[str]) -> list[str]:
    """Which of ``tenants`` Herald has no record of, in the order given."""
    known = set(session.exec(select(Tenant.id).where(col(Tenant.id).in_(tenants))).all())
    return [t for t in tenants if t not in known]
