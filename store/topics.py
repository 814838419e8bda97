"""Audiences: topics (named lists of subscribers), their members, and bulk subscriber import."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic import Field as PydanticField
from sqlalchemy import and_, delete, func
from sqlalchemy import select as sa_select
from sqlmodel import Field, Session, SQLModel, col, select

from core.audience import Audience, data_filtered, matches
from store.db import dialect_insert
from store.models import (
    NO_NUL,
    Preference,
    Subscriber,
    SubscriberCreate,
    SubscriberId,
    _ts,
    utcnow,
)
from store.subscribers import existing_ids

MAX_BATCH = 10_000
# Rows per INSERT statement: well under SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 1_000


# --- topics -------------------------------------------------------------------------


class TopicBase(SQLModel):
    name: str = Field(max_length=200)


class TopicCreate(TopicBase):
    name: str = PydanticField(min_length=1, max_length=200, pattern=NO_NUL)


class Topic(TopicBase, table=True):
    __tablename__ = "topics"
    tenant_id: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=128)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class TopicPublic(TopicBase):
    key: str
    subscriber_count: int
    created_at: datetime
    updated_at: datetime


class TopicSubscriber(SQLModel, table=True):
    """Membership; the primary key's order serves counts and paging by subscriber id."""

    __tablename__ = "topic_subscribers"
    tenant_id: str = Field(primary_key=True, max_length=64)
    topic_key: str = Field(primary_key=True, max_length=128)
    subscriber_id: str = Field(primary_key=True, max_length=128)
    created_at: datetime = _ts()


_TOPIC_SUBSCRIBERS = TopicSubscriber.__table__  # type: ignore[attr-defined]
_SUBSCRIBERS = Subscriber.__table__  # type: ignore[attr-defined]


class TopicMembersIn(SQLModel):
    subscribers: list[SubscriberId] = Field(min_length=1, max_length=MAX_BATCH)


class TopicMembersAdded(SQLModel):
    added: int
    subscriber_count: int


def put_topic(session: Session, tenant_id: str, key: str, name: str) -> TopicPublic:
    """Upsert in one statement, so two writers creating the same topic both succeed."""
    now = utcnow()
    stmt = dialect_insert(session)(Topic).values(
        tenant_id=tenant_id, key=key, name=name, created_at=now, updated_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenant_id", "key"],
        set_={"name": stmt.excluded.name, "updated_at": stmt.excluded.updated_at},
    )
    session.execute(stmt)
    found = get_topic(session, tenant_id, key)
    assert found is not None
    return found


def _public(topic: Topic, count: int) -> TopicPublic:
    return TopicPublic(
        key=topic.key,
        name=topic.name,
        subscriber_count=count,
        created_at=topic.created_at,
        updated_at=topic.updated_at,
    )


def get_topic(session: Session, tenant_id: str, key: str) -> TopicPublic | None:
    topic = session.get(Topic, (tenant_id, key), populate_existing=True)
    if topic is None:
        return None
    return _public(topic, member_count(session, tenant_id, key))


def member_count(session: Session, tenant_id: str, key: str) -> int:
    stmt = select(func.count()).where(
        TopicSubscriber.tenant_id == tenant_id, TopicSubscriber.topic_key == key
    )
    return int(session.exec(stmt).one())


def list_topics(session: Session, tenant_id: str) -> list[TopicPublic]:
    """Every topic with its member count, in one grouped query."""
    count = func.count(col(TopicSubscriber.subscriber_id))
    stmt = (
        select(Topic, count)
        .join(
            TopicSubscriber,
            and_(
                col(TopicSubscriber.tenant_id) == col(Topic.tenant_id),
                col(TopicSubscriber.topic_key) == col(Topic.key),
            ),
            isouter=True,
        )
        .where(Topic.tenant_id == tenant_id)
        .group_by(col(Topic.tenant_id), col(Topic.key))
        .order_by(col(Topic.key))
    )
    return [_public(topic, n) for topic, n in session.exec(stmt).all()]


def topic_exists(session: Session, tenant_id: str, key: str) -> bool:
    stmt = select(Topic.key).where(Topic.tenant_id == tenant_id, Topic.key == key)
    return session.exec(stmt).first() is not None


def unknown_subscribers(session: Session, tenant_id: str, ids: Sequence[str]) -> list[int]:
    """Indexes of the ids that are not subscribers of the tenant (one query)."""
    known = existing_ids(session, tenant_id, ids)
    return [i for i, sid in enumerate(ids) if sid not in known]


def add_members(session: Session, tenant_id: str, key: str, ids: Iterable[str]) -> int:
    """Add subscribers to a topic; members already in it stay as they were. Returns how many
    were new. INSERT ... ON CONFLICT DO NOTHING, as one executemany per chunk."""
    now = utcnow()
    rows = [
        {"tenant_id": tenant_id, "topic_key": key, "subscriber_id": sid, "created_at": now}
        for sid in dict.fromkeys(ids)
    ]
    table = _TOPIC_SUBSCRIBERS
    # RETURNING names the rows actually inserted: rowcount after an executemany is
    # not reliable on every driver.
    stmt = dialect_insert(session)(table).on_conflict_do_nothing().returning(table.c.subscriber_id)
    added = 0
    for start in range(0, len(rows), _CHUNK):
        added += len(session.execute(stmt, rows[start : start + _CHUNK]).all())
    return added


def remove_member(session: Session, tenant_id: str, key: str, subscriber_id: str) -> bool:
    stmt = delete(TopicSubscriber).where(
        col(TopicSubscriber.tenant_id) == tenant_id,
        col(TopicSubscriber.topic_key) == key,
        col(TopicSubscriber.subscriber_id) == subscriber_id,
    )
    result = session.execute(stmt)
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- audiences -----------------------------------------------------------------------


class AudiencePage(BaseModel):
    """One page of a topic's members, in subscriber-id order.

    ``subscriber_ids`` pass the filter and have not opted out; ``opted_out`` pass the
    filter but turned the topic off in their preferences. ``scanned`` counts the members
    read (missing subscribers and filtered-out ones included); ``next_after`` is the last
    of them, or None when the topic is exhausted.
    """

    subscriber_ids: list[str]
    scanned: int
    next_after: str | None
    opted_out: list[str]


def _member_is_subscriber() -> Any:
    return and_(
        col(Subscriber.tenant_id) == col(TopicSubscriber.tenant_id),
        col(Subscriber.id) == col(TopicSubscriber.subscriber_id),
    )


def _in_topic(tenant_id: str, topic: str) -> tuple[Any, Any]:
    return col(TopicSubscriber.tenant_id) == tenant_id, col(TopicSubscriber.topic_key) == topic


def _member_rows(
    session: Session, tenant_id: str, audience: Audience, after: str | None, limit: int
) -> list[Any]:
    member = col(TopicSubscriber.subscriber_id)
    columns: list[Any] = [
        member.label("member"),
        col(Subscriber.id).label("id"),
        col(Subscriber.email),
        col(Subscriber.phone),
        col(Subscriber.name),
        col(Subscriber.locale),
        col(Subscriber.timezone),
        col(Preference.topics).label("topics"),
    ]
    if data_filtered(audience):
        columns.append(col(Subscriber.data))
    stmt = (
        sa_select(*columns)
        .select_from(TopicSubscriber)
        .join(Subscriber, _member_is_subscriber(), isouter=True)
        .join(
            Preference,
            and_(
                col(Preference.tenant_id) == col(TopicSubscriber.tenant_id),
                col(Preference.subscriber_id) == member,
            ),
            isouter=True,
        )
        .where(*_in_topic(tenant_id, audience.topic))
        .order_by(member)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(member > after)
    zone = audience.where.get("timezone")
    if isinstance(zone, str):  # a broadcast's per-timezone pass: narrow it in SQL
        stmt = stmt.where(col(Subscriber.timezone) == zone)
    return list(session.execute(stmt).all())


def audience_timezones(session: Session, tenant_id: str, topic: str) -> list[str]:
    """The timezones among a topic's members: one timer each for a local-time broadcast."""
    stmt = (
        sa_select(col(Subscriber.timezone))
        .select_from(TopicSubscriber)
        .join(Subscriber, _member_is_subscriber())
        .where(*_in_topic(tenant_id, topic))
        .distinct()
    )
    return sorted(z for (z,) in session.execute(stmt).all() if z)


def audience_page(
    session: Session, tenant_id: str, audience: Audience, after: str | None, limit: int
) -> AudiencePage:
    """Keyset paging (``after`` exclusive) over the topic's members, ``limit`` per page;
    one query, then the filter and the topic opt-out in Python."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    # One row beyond the page says whether another page exists, so the last page
    # is not followed by an empty one.
    rows = _member_rows(session, tenant_id, audience, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    ids: list[str] = []
    opted_out: list[str] = []
    for row in rows:
        if row.id is None or not matches(audience, row._mapping):
            continue
        if (row.topics or {}).get(audience.topic) is False:
            opted_out.append(row.id)
        else:
            ids.append(row.id)
    return AudiencePage(
        subscriber_ids=ids,
        scanned=len(rows),
        next_after=rows[-1].member if more else None,
        opted_out=opted_out,
    )


def audience_count(session: Session, tenant_id: str, audience: Audience) -> int:
    """Members that exist and match ``where``, opted-out ones included."""
    if not audience.where:
        stmt = (
            select(func.count())
            .select_from(TopicSubscriber)
            .join(
                Subscriber,
                and_(
                    col(Subscriber.tenant_id) == col(TopicSubscriber.tenant_id),
                    col(Subscriber.id) == col(TopicSubscriber.subscriber_id),
                ),
            )
            .where(
                TopicSubscriber.tenant_id == tenant_id,
                TopicSubscriber.topic_key == audience.topic,
            )
        )
        return int(session.exec(stmt).one())
    total, after = 0, None
    while True:
        page = audience_page(session, tenant_id, audience, after, 5_000)
        total += len(page.subscriber_ids) + len(page.opted_out)
        if page.next_after is None:
            return total
        after = page.next_after


# --- bulk import ---------------------------------------------------------------------


class SubscriberBulkRow(SubscriberCreate):
    """One row of a bulk import: PUT /v1/subscribers/{id}'s body plus its id."""

    id: SubscriberId


class SubscriberBulkIn(SQLModel):
    # Rows stay raw here: each is validated on its own, so one bad row spoils nothing else.
    subscribers: list[Any] = Field(min_length=1, max_length=MAX_BATCH)


class BulkInvalid(BaseModel):
    index: int
    field: str | None = PydanticField(description="The top-level field at fault, if one is")
    loc: list[str | int]
    msg: str


class BulkImportResult(BaseModel):
    created: list[str]
    updated: list[str]
    invalid: list[BulkInvalid]


def parse_bulk(raw: Sequence[Any]) -> tuple[dict[str, dict[str, Any]], list[BulkInvalid]]:
    """Validate each row alone: valid rows as id -> sent fields, and each invalid field.

    A repeated id merges into its first row's place, later fields winning, as the
    same PUTs one after another would leave it.
    """
    valid: dict[str, dict[str, Any]] = {}
    invalid: list[BulkInvalid] = []
    for index, item in enumerate(raw):
        try:
            row = SubscriberBulkRow.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                loc = list(err["loc"])
                field = loc[0] if loc and isinstance(loc[0], str) else None
                invalid.append(BulkInvalid(index=index, field=field, loc=loc, msg=err["msg"]))
            continue
        values = row.to_row_values()
        sid = values.pop("id")
        valid[sid] = {**valid.get(sid, {}), **values}
    return valid, invalid


def bulk_upsert_subscribers(
    session: Session, tenant_id: str, rows: dict[str, dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """Upsert many subscribers with PUT's semantics; returns (created ids, updated ids).

    Fields a row leaves out keep their stored values: rows are grouped by the set of
    fields they send, and each group is one INSERT ... ON CONFLICT DO UPDATE of exactly
    those fields, run as an executemany in chunks (a CSV import has one or a few groups).
    """
    existing = existing_ids(session, tenant_id, rows)
    now = utcnow()
    template = Subscriber(tenant_id=tenant_id, id="-", created_at=now, updated_at=now)
    defaults = {c.name: getattr(template, c.name) for c in _SUBSCRIBERS.columns}
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for sid, values in rows.items():
        groups.setdefault(frozenset(values), []).append({**defaults, **values, "id": sid})
    insert = dialect_insert(session)
    for fields, group in groups.items():
        stmt = insert(_SUBSCRIBERS)
        update = [*sorted(fields), "updated_at"]
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant_id", "id"],
            set_={name: stmt.excluded[name] for name in update},
        )
        for start in range(0, len(group), _CHUNK):
            session.execute(stmt, group[start : start + _CHUNK])
    created = [sid for sid in rows if sid not in existing]
    updated = [sid for sid in rows if sid in existing]
    return created, updated
