"""Suppressed addresses and tracked links."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Field, Session, SQLModel

from store.db import dialect_insert, table
from store.models import UTCDateTime, utcnow


class Suppression(SQLModel, table=True):
    """An address later messages skip: a hard bounce or a spam report.

    Keyed by the address, not the subscriber, so a changed address is sent to again.
    """

    __tablename__ = "suppressions"
    tenant_id: str = Field(primary_key=True, max_length=64)
    channel: str = Field(primary_key=True, max_length=16)
    address: str = Field(primary_key=True, max_length=320)
    reason: str = Field(max_length=500)
    delivery_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class TrackedLink(SQLModel, table=True):
    """A link rewritten for click tracking; its id is derived, so a retried render reuses it."""

    __tablename__ = "tracked_links"
    id: str = Field(primary_key=True, max_length=32)
    tenant_id: str = Field(max_length=64)
    delivery_id: str = Field(index=True, max_length=64)
    url: str = Field(max_length=4096)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


def suppress(
    session: Session, tenant_id: str, channel: str, address: str, reason: str, delivery_id: str
) -> None:
    """Remember the address; the first reason stays."""
    stmt = dialect_insert(session)(Suppression).values(
        tenant_id=tenant_id,
        channel=channel,
        address=address.lower(),
        reason=reason[:500],
        delivery_id=delivery_id,
        created_at=utcnow(),
    )
    session.execute(stmt.on_conflict_do_nothing())


@dataclass(frozen=True)
class NewLink:
    """A tracked link to store before its message goes out (a plain row, not an ORM object)."""

    id: str
    tenant_id: str
    delivery_id: str
    url: str


def save_links(session: Session, links: list[NewLink]) -> None:
    """One executemany for a batch; a link a retried render made already is kept."""
    if not links:
        return
    now = utcnow()
    rows = [
        {
            "id": k.id,
            "tenant_id": k.tenant_id,
            "delivery_id": k.delivery_id,
            "url": k.url,
            "created_at": now,
        }
        for k in links
    ]
    session.execute(dialect_insert(session)(table(TrackedLink)).on_conflict_do_nothing(), rows)


def get_link(session: Session, link_id: str) -> TrackedLink | None:
    return session.get(TrackedLink, link_id)
