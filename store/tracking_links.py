"""Reads behind Herald's tracking endpoints (the writes go through ``store.lifecycle``)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import col

from store.db import read_scope
from store.engagement import TrackedLink, get_link
from store.models import Delivery, Notification


def find_link(engine: Engine, link_id: str) -> TrackedLink | None:
    """The stored link a click token names: the only place a redirect target comes from."""
    with read_scope(engine) as session:
        return get_link(session, link_id)


def unsubscribe_category(engine: Engine, delivery_id: str) -> str | None:
    """The category a delivery's unsubscribe link turns off, or None if there is none."""
    stmt = (
        select(col(Notification.category))
        .join(Delivery, col(Delivery.notification_id) == col(Notification.id))
        .where(col(Delivery.id) == delivery_id)
    )
    with read_scope(engine) as session:
        category: str | None = session.execute(stmt).scalar_one_or_none()
        return category
