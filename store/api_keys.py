"""API keys: stored hashed, named, revocable; seeded from HERALD_API_KEYS or made by an admin.

A key's plaintext exists only in the answer that creates it. Keys are high-entropy random
strings, so a plain SHA-256 (not a slow password hash) is enough to make the table useless
to whoever reads it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints
from sqlalchemy import update
from sqlmodel import Field, Session, SQLModel, col, or_, select

from store.db import dialect_insert, table
from store.models import Tenant, UTCDateTime, _ts, utcnow

log = logging.getLogger(__name__)

KEY_PREFIX = "hk_"
# How long an API process trusts a key it has checked: a key revoked elsewhere (the CLI,
# another API process) stops working everywhere within this bound.
KEY_CACHE_SECONDS = 10.0
SEEDED_NAME = "HERALD_API_KEYS"
# Tenant ids become broker routing-key words and URL parts: no dots, spaces or wildcards.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

# Some character other than NUL and Unicode White_Space, spelled out: JSON Schema's ``\\s``
# and Python's differ at the edges (U+001C..U+001F, U+FEFF).
_BLANK = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NAME_PATTERN = rf"^[^\x00]*[^\x00{_BLANK}][^\x00]*$"

RevokedReason = Literal["revoked", "unlisted"]


class ApiKeyRecord(SQLModel, table=True):
    """One key. ``seeded`` keys come from HERALD_API_KEYS and go when it stops listing them."""

    __tablename__ = "tenant_api_keys"
    id: str = Field(primary_key=True, max_length=32)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=64)
    key_hash: str = Field(unique=True, max_length=64)
    # The first characters of the plaintext, so people can tell their keys apart.
    prefix: str = Field(max_length=16)
    name: str = Field(max_length=100)
    seeded: bool = False
    created_at: datetime = _ts()
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # "revoked" by the CLI or admin API (final), or "unlisted" from HERALD_API_KEYS.
    revoked_reason: str | None = Field(default=None, max_length=16)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
    # Taken as given, so the document's length and pattern are exactly what is checked.
    name: Annotated[str, StringConstraints(max_length=100, pattern=NAME_PATTERN)]


class KeyPublic(BaseModel):
    """What listings show: never the plaintext or its hash."""

    id: str
    tenant: str
    name: str
    prefix: str
    seeded: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked_reason: str | None

    @classmethod
    def of(cls, row: ApiKeyRecord) -> KeyPublic:
        return cls(
            id=row.id,
            tenant=row.tenant_id,
            name=row.name,
            prefix=row.prefix,
            seeded=row.seeded,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
            revoked_reason=row.revoked_reason,
        )


class KeyCreated(KeyPublic):
    key: str  # the plaintext, shown this once


@dataclass(frozen=True)
class ActiveKey:
    id: str
    tenant: str
    last_used_at: datetime | None


@dataclass(frozen=True)
class SeedResult:
    created: int
    restored: int
    revoked: int


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def display_prefix(key: str) -> str:
    """Enough to recognise a key, never enough to guess it; short seeded keys show nothing."""
    if key.startswith(KEY_PREFIX):
        return key[: len(KEY_PREFIX) + 8]
    return key[:4] if len(key) >= 24 else ""


def _new_key_id() -> str:
    return "key_" + secrets.token_hex(8)  # short enough to type after `herald keys revoke`


def ensure_tenants(session: Session, tenants: set[str]) -> None:
    """Create missing tenants; concurrent starts may race here, so conflicts are ignored."""
    if not tenants:
        return
    insert = dialect_insert(session)
    session.execute(
        insert(table(Tenant))
        .values([{"id": t, "created_at": utcnow()} for t in sorted(tenants)])
        .on_conflict_do_nothing()
    )


def create_key(session: Session, body: KeyCreate) -> KeyCreated:
    """A new random key for ``body.tenant`` (created if new); the only time it is readable."""
    ensure_tenants(session, {body.tenant})
    plaintext = generate_key()
    row = ApiKeyRecord(
        id=_new_key_id(),
        tenant_id=body.tenant,
        key_hash=hash_key(plaintext),
        prefix=display_prefix(plaintext),
        name=body.name,
    )
    session.add(row)
    session.flush()
    return KeyCreated(**KeyPublic.of(row).model_dump(), key=plaintext)


def list_keys(
    session: Session, tenant: str | None = None, include_revoked: bool = False
) -> list[KeyPublic]:
    query = select(ApiKeyRecord)
    if tenant is not None:
        query = query.where(ApiKeyRecord.tenant_id == tenant)
    if not include_revoked:
        query = query.where(col(ApiKeyRecord.revoked_at).is_(None))
    query = query.order_by(col(ApiKeyRecord.tenant_id), col(ApiKeyRecord.created_at))
    return [KeyPublic.of(row) for row in session.exec(query).all()]


def revoke_key(session: Session, key_id: str) -> KeyPublic | None:
    """Revoke for good (seeding never brings it back); revoking twice changes nothing."""
    row = session.get(ApiKeyRecord, key_id)
    if row is None:
        return None
    if row.revoked_reason != "revoked":
        row.revoked_at = row.revoked_at or utcnow()
        row.revoked_reason = "revoked"
        session.add(row)
        session.flush()
    return KeyPublic.of(row)


def active_key(session: Session, key: str) -> ActiveKey | None:
    row = session.exec(
        select(ApiKeyRecord.id, ApiKeyRecord.tenant_id, ApiKeyRecord.last_used_at).where(
            ApiKeyRecord.key_hash == hash_key(key), col(ApiKeyRecord.revoked_at).is_(None)
        )
    ).first()
    return None if row is None else ActiveKey(*row)


def touch_key(session: Session, key_id: str, now: datetime, every: timedelta) -> None:
    """Record a use, unless one within ``every`` already was (by any process)."""
    rows = table(ApiKeyRecord)
    session.execute(
        update(rows)
        .where(
            rows.c.id == key_id,
            or_(rows.c.last_used_at.is_(None), rows.c.last_used_at <= now - every),
        )
        .values(last_used_at=now)
    )


def seed_api_keys(
    session: Session, key_map: dict[str, str], *, revoke_unlisted: bool
) -> SeedResult:
    """Make HERALD_API_KEYS (``{key: tenant}``) true in the table.

    Listed keys exist, belong to their tenant and are seeded; one revoked only for being
    unlisted works again. With ``revoke_unlisted``, seeded keys it no longer lists are
    revoked. Keys made by the CLI or admin API are never touched unless listed.
    """
    now = utcnow()
    ensure_tenants(session, set(key_map.values()))
    wanted = {hash_key(k): (k, tenant) for k, tenant in key_map.items()}
    existing = {
        row.key_hash: row
        for row in session.exec(
            select(ApiKeyRecord).where(col(ApiKeyRecord.key_hash).in_(list(wanted)))
        ).all()
    }
    created = restored = 0
    new_rows = [
        {
            "id": _new_key_id(),
            "tenant_id": tenant,
            "key_hash": digest,
            "prefix": display_prefix(key),
            "name": SEEDED_NAME,
            "seeded": True,
            "created_at": now,
        }
        for digest, (key, tenant) in wanted.items()
        if digest not in existing
    ]
    if new_rows:
        insert = dialect_insert(session)
        result = session.execute(
            insert(table(ApiKeyRecord))
            .values(new_rows)
            .on_conflict_do_nothing(index_elements=["key_hash"])
        )
        created = max(result.rowcount or 0, 0)  # type: ignore[attr-defined]
    for digest, row in existing.items():
        tenant = wanted[digest][1]
        if row.revoked_reason == "revoked":
            log.warning("HERALD_API_KEYS lists key %s, which was revoked: it stays revoked", row.id)
        if row.revoked_reason == "unlisted":
            row.revoked_at = row.revoked_reason = None
            restored += 1
        row.tenant_id, row.seeded = tenant, True
        session.add(row)
    revoked = 0
    if revoke_unlisted:
        rows = table(ApiKeyRecord)
        result = session.execute(
            update(rows)
            .where(
                rows.c.seeded.is_(True),
                rows.c.revoked_at.is_(None),
                rows.c.key_hash.not_in(list(wanted)),
            )
            .values(revoked_at=now, revoked_reason="unlisted")
        )
        revoked = result.rowcount or 0  # type: ignore[attr-defined]
    session.flush()
    if revoked:
        log.info("revoked %d API key(s) that HERALD_API_KEYS no longer lists", revoked)
    return SeedResult(created=created, restored=restored, revoked=revoked)
