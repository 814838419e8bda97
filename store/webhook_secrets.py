"""Each tenant's webhook signing secret, and the one it replaced while its grace runs.

One secret per tenant means one tenant's receiver cannot forge webhooks another tenant's
endpoints accept. A rotation keeps the old secret signing beside the new one for a grace
period (Standard Webhooks allows several signatures), so receivers switch without a gap.
The secrets are stored as they are: signing needs them, unlike API keys, which are hashed.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Field, Session, SQLModel, col, select

from store.db import dialect_insert, table
from store.models import UTCDateTime, _ts, utcnow

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


class WebhookSecret(SQLModel, table=True):
    __tablename__ = "webhook_secrets"
    tenant_id: str = Field(primary_key=True, max_length=64)
    secret: str = Field(max_length=128)
    created_at: datetime = _ts()
    # The secret this one replaced, still signing until ``previous_expires_at``.
    previous_secret: str | None = Field(default=None, max_length=128)
    previous_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


@dataclass(frozen=True)
class SecretView:
    """What the API shows: the current secret and when the previous one stops signing."""

    secret: str
    created_at: datetime
    previous_expires_at: datetime | None


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _insert_missing(session: Session, rows: dict[str, str]) -> None:
    """Concurrent first uses (two workers, the API) may race: the first insert wins."""
    if not rows:
        return
    insert = dialect_insert(session)
    now = utcnow()
    session.execute(
        insert(table(WebhookSecret))
        .values([{"tenant_id": t, "secret": s, "created_at": now} for t, s in rows.items()])
        .on_conflict_do_nothing()
    )


def seed_secrets(session: Session, tenants: Iterable[str], secret: str) -> None:
    """Give ``tenants`` ``secret`` as their first one; a tenant that has one keeps it."""
    _insert_missing(session, dict.fromkeys(tenants, secret))


def ensure_secret(session: Session, tenant: str) -> WebhookSecret:
    """The tenant's row, made with a fresh random secret on first use."""
    row = session.get(WebhookSecret, tenant)
    if row is None:
        _insert_missing(session, {tenant: new_secret()})
        row = session.get(WebhookSecret, tenant)
    assert row is not None
    return row


def signing_secrets(row: WebhookSecret, now: datetime | None = None) -> tuple[str, ...]:
    """The secrets to sign with, newest first: the previous one only during its grace."""
    previous, expires = row.previous_secret, row.previous_expires_at
    if previous is not None and expires is not None and expires > (now or utcnow()):
        return (row.secret, previous)
    return (row.secret,)


def tenant_signing_secrets(session: Session, tenant: str) -> tuple[str, ...]:
    return signing_secrets(ensure_secret(session, tenant))


def view(row: WebhookSecret, now: datetime | None = None) -> SecretView:
    expires = row.previous_expires_at
    if expires is not None and expires <= (now or utcnow()):
        expires = None  # the grace is over: nothing but the current secret signs
    return SecretView(row.secret, row.created_at, expires)


def rotate(session: Session, tenant: str, grace: timedelta) -> WebhookSecret:
    """A new secret; the current one keeps signing for ``grace``, an older one stops now."""
    ensure_secret(session, tenant)
    # Locked, and read afresh rather than from this session's cache: two rotations at once
    # must not both demote the same secret.
    row = session.exec(
        select(WebhookSecret)
        .where(col(WebhookSecret.tenant_id) == tenant)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    now = utcnow()
    if grace > timedelta(0):
        row.previous_secret, row.previous_expires_at = row.secret, now + grace
    else:
        row.previous_secret, row.previous_expires_at = None, None
    row.secret, row.created_at = new_secret(), now
    session.add(row)
    session.flush()
    return row
