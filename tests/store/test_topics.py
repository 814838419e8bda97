"""Audiences: a topic's members, a filter on subscriber fields, topic opt-outs, paging."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine

from core.audience import Audience, matches
from store.db import session_scope
from store.subscribers import get_subscriber, put_preferences
from store.topics import (
    add_members,
    audience_count,
    audience_page,
    bulk_upsert_subscribers,
    put_topic,
    topic_exists,
)
from tests.conftest import unique

PEOPLE: dict[str, dict[str, Any]] = {
    "ada": {"locale": "de", "data": {"plan": "pro", "team": {"size": 5}}},
    "bob": {"locale": "de", "data": {"plan": "free"}},
    "cy": {"locale": "fr", "data": {"plan": "pro", "beta": True}},
    "dee": {"locale": "en", "data": {"plan": "team", "beta": 1}},
    "eve": {"locale": "en", "email": "eve@example.com"},
}


def _topic(engine: Engine, people: dict[str, dict[str, Any]], extra: tuple[str, ...] = ()) -> str:
    """A fresh tenant whose topic ``beta`` holds ``people`` (and ``extra`` ids that are
    not subscribers); returns the tenant."""
    tenant = unique("tenant")
    with session_scope(engine) as session:
        bulk_upsert_subscribers(session, tenant, people)
        put_topic(session, tenant, "beta", "Beta testers")
        add_members(session, tenant, "beta", [*people, *extra])
    return tenant


def _all_pages(engine: Engine, tenant: str, audience: Audience, limit: int) -> list[Any]:
    pages, after = [], None
    with session_scope(engine) as session:
        while True:
            page = audience_page(session, tenant, audience, after, limit)
            pages.append(page)
            if page.next_after is None:
                return pages
            after = page.next_after


def _ids(engine: Engine, tenant: str, where: dict[str, Any]) -> set[str]:
    (page,) = _all_pages(engine, tenant, Audience(topic="beta", where=where), 100)
    return set(page.subscriber_ids)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({}, {"ada", "bob", "cy", "dee", "eve"}),
        ({"locale": "de"}, {"ada", "bob"}),
        ({"locale": "de", "data.plan": "pro"}, {"ada"}),
        ({"locale": {"in": ["de", "fr"]}}, {"ada", "bob", "cy"}),
        ({"data.plan": {"in": ["pro", "team"]}}, {"ada", "cy", "dee"}),
        ({"data.team.size": 5}, {"ada"}),
        ({"data.beta": True}, {"cy"}),  # JSON true is not 1
        ({"data.plan": None}, {"eve"}),  # no such key counts as null
        ({"email": "eve@example.com"}, {"eve"}),
        ({"id": {"in": ["bob", "dee", "nobody"]}}, {"bob", "dee"}),
        ({"locale": "es"}, set()),
    ],
)
def test_where_filters(engine: Engine, where: dict[str, Any], expected: set[str]) -> None:
    tenant = _topic(engine, PEOPLE)
    assert _ids(engine, tenant, where) == expected
    with session_scope(engine) as session:
        assert audience_count(session, tenant, Audience(topic="beta", where=where)) == len(expected)


def test_unknown_where_field_is_named_in_the_error() -> None:
    class Body(BaseModel):
        audience: Audience

    with pytest.raises(ValidationError) as caught:
        Body.model_validate(
            {
                "audience": {
                    "topic": "beta",
                    "where": {"plan": "pro", "locale": "de", "data.x": {"like": "a%"}},
                }
            }
        )
    errors = {e["loc"]: e["type"] for e in caught.value.errors()}
    assert errors == {
        ("audience", "where", "plan"): "unknown_field",
        ("audience", "where", "data.x"): "filter_value",
    }
    bad_filters: list[dict[str, Any]] = [{"locale": {"in": []}}, {"data.": 1}, {"data": {"x": 1}}]
    for bad in bad_filters:
        with pytest.raises(ValidationError):
            Audience(topic="beta", where=bad)
    with pytest.raises(ValidationError):
        Audience.model_validate({"topic": "beta", "filter": {}})  # extra fields are refused


def test_matches_reads_rows_mappings_and_objects() -> None:
    audience = Audience(topic="t", where={"locale": "de", "data.plan": {"in": ["pro"]}})
    assert matches(audience, {"locale": "de", "data": {"plan": "pro"}})
    assert matches(audience, SimpleNamespace(locale="de", data={"plan": "pro"}))
    assert not matches(audience, SimpleNamespace(locale="de", data={"plan": ["pro"]}))
    assert not matches(audience, {"locale": "de", "data": None})


def test_paging_covers_every_member_exactly_once(engine: Engine) -> None:
    people = {f"p{i:03d}": {"locale": "de" if i % 3 else "en"} for i in range(53)}
    # Members that are not (or no longer) subscribers are scanned but never returned.
    tenant = _topic(engine, people, extra=("gone-1", "p010x", "zz-gone"))
    audience = Audience(topic="beta", where={"locale": "de"})
    pages = _all_pages(engine, tenant, audience, 7)
    returned = [sid for page in pages for sid in page.subscriber_ids]
    assert len(returned) == len(set(returned))
    assert set(returned) == {sid for sid, p in people.items() if p["locale"] == "de"}
    assert sum(page.scanned for page in pages) == 53 + 3
    assert all(page.scanned == 7 for page in pages[:-1])
    assert len(pages) == -(-56 // 7)  # no empty page after the last one
    assert [p.next_after for p in pages][-1] is None
    # Pages follow each other: each starts after the previous page's last member.
    afters = [p.next_after for p in pages[:-1]]
    assert afters == sorted(afters) and len(set(afters)) == len(afters)


def test_opt_outs_are_excluded_and_reported(engine: Engine) -> None:
    tenant = _topic(engine, PEOPLE)
    with session_scope(engine) as session:
        put_preferences(session, tenant, "ada", {"topics": {"beta": False}})
        put_preferences(session, tenant, "bob", {"topics": {"beta": True, "other": False}})
        put_preferences(session, tenant, "cy", {"topics": {"other": False}})
        put_preferences(session, tenant, "eve", {"topics": {"beta": False}})
    (page,) = _all_pages(engine, tenant, Audience(topic="beta", where={}), 10)
    assert set(page.subscriber_ids) == {"bob", "cy", "dee"}
    assert set(page.opted_out) == {"ada", "eve"}
    # Opted-out members outside the filter are neither sent nor reported.
    (de,) = _all_pages(engine, tenant, Audience(topic="beta", where={"locale": "de"}), 10)
    assert (de.subscriber_ids, de.opted_out) == (["bob"], ["ada"])
    with session_scope(engine) as session:
        # The count is the audience before opt-outs.
        assert audience_count(session, tenant, Audience(topic="beta")) == 5
        assert audience_count(session, tenant, Audience(topic="beta", where={"locale": "de"})) == 2


def test_topic_exists_and_empty_topic(engine: Engine) -> None:
    tenant = _topic(engine, {})
    with session_scope(engine) as session:
        assert topic_exists(session, tenant, "beta")
        assert not topic_exists(session, tenant, "gamma")
        assert not topic_exists(session, unique("tenant"), "beta")
        page = audience_page(session, tenant, Audience(topic="beta"), None, 10)
        assert page.model_dump() == {
            "subscriber_ids": [],
            "scanned": 0,
            "next_after": None,
            "opted_out": [],
        }
        assert audience_count(session, tenant, Audience(topic="beta")) == 0
        with pytest.raises(ValueError):
            audience_page(session, tenant, Audience(topic="beta"), None, 0)


def test_bulk_upsert_keeps_fields_a_row_omits(engine: Engine) -> None:
    tenant = unique("tenant")
    with session_scope(engine) as session:
        created, updated = bulk_upsert_subscribers(
            session,
            tenant,
            {"a": {"email": "a@example.com", "locale": "de"}, "b": {"name": "B"}},
        )
        assert (created, updated) == (["a", "b"], [])
    with session_scope(engine) as session:
        # Two field sets in one call: each row updates only what it sent.
        created, updated = bulk_upsert_subscribers(
            session, tenant, {"a": {"name": "A"}, "b": {"locale": "fr", "email": None}, "c": {}}
        )
        assert (created, updated) == (["c"], ["a", "b"])
    with session_scope(engine) as session:
        rows = {sid: get_subscriber(session, tenant, sid) for sid in ("a", "b", "c")}
    assert {sid: (r.email, r.name, r.locale) for sid, r in rows.items() if r} == {
        "a": ("a@example.com", "A", "de"),
        "b": (None, "B", "fr"),
        "c": (None, None, "en"),
    }
