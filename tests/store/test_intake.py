"""The consumer's group commit: many events in one transaction, each refused alone."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from store.db import read_scope, session_scope
from store.events import AcceptedEvent, RecipientSpec, UnknownSubscribersError
from store.flows import put_flow
from store.intake import AcceptRequest, accept_many
from store.models import Event, Notification
from store.subscribers import upsert_subscriber
from tests.conftest import recorded_statements, unique

SMS = {"channel": "sms", "text": "x"}


def _request(key: str | None, sub: str, n: int = 0) -> AcceptRequest:
    return AcceptRequest(
        type="order.placed",
        data={"n": n},
        actor=None,
        recipients=[RecipientSpec(sub)],
        idempotency_key=key,
        request_fingerprint=f"fp-{n}",
    )


def test_a_refused_event_rolls_back_alone_and_a_repeated_key_is_one_event(engine: Engine) -> None:
    tenant, sub = unique("tenant"), unique("u")
    with session_scope(engine) as s:
        upsert_subscriber(s, tenant, sub, {"email": "ada@example.com"})
    key = unique("k")
    results = accept_many(
        engine,
        tenant,
        [
            _request(key, sub, 1),
            _request(None, "nobody", 2),  # unknown subscriber: refused, nothing stored
            _request(key, sub, 1),  # the same key and body again: the first event
            _request(unique("k"), sub, 3),
        ],
    )
    first, refused, again, last = results
    assert isinstance(first, AcceptedEvent) and first.created
    assert isinstance(refused, UnknownSubscribersError)
    assert isinstance(again, AcceptedEvent) and not again.created
    assert again.event.id == first.event.id
    assert isinstance(last, AcceptedEvent) and last.created
    with read_scope(engine) as s:
        stored = s.exec(select(Event).where(col(Event.tenant_id) == tenant)).all()
    assert sorted(e.data["n"] for e in stored) == [1, 3]


def test_a_subscriber_upserted_by_a_refused_event_is_unknown_to_the_next(engine: Engine) -> None:
    """The batch remembers which subscribers exist; a rolled-back upsert must not count."""
    tenant, inline = unique("tenant"), unique("u")
    refused_with_inline = AcceptRequest(
        type="order.placed",
        data={},
        actor=None,
        recipients=[RecipientSpec(inline, {"email": "x@example.com"}), RecipientSpec("nobody")],
        idempotency_key=None,
        request_fingerprint="fp",
    )
    results = accept_many(engine, tenant, [refused_with_inline, _request(None, inline)])
    assert isinstance(results[0], UnknownSubscribersError)
    assert isinstance(results[1], UnknownSubscribersError)
    assert results[1].ids == [inline]


def test_savepoints_only_when_an_event_is_refused(engine: Engine) -> None:
    """A clean batch commits without a savepoint per event; a refusal redoes it with them."""
    tenant, sub = unique("tenant"), unique("u")
    with session_scope(engine) as s:
        upsert_subscriber(s, tenant, sub, {"email": "ada@example.com"})
    with recorded_statements(engine) as statements:
        clean = accept_many(engine, tenant, [_request(None, sub, n) for n in range(5)])
        assert all(isinstance(r, AcceptedEvent) for r in clean)
        assert not [s for s in statements if s.upper().startswith("SAVEPOINT")]
        statements.clear()
        mixed = accept_many(engine, tenant, [_request(None, sub, 10), _request(None, "nobody", 11)])
        assert isinstance(mixed[0], AcceptedEvent)
        assert isinstance(mixed[1], UnknownSubscribersError)
        assert len([s for s in statements if s.upper().startswith("SAVEPOINT")]) == 2
    with read_scope(engine) as s:
        stored = s.exec(select(Event).where(col(Event.tenant_id) == tenant)).all()
    assert sorted(e.data["n"] for e in stored) == [0, 1, 2, 3, 4, 10]


def test_a_clean_batch_writes_each_table_once(engine: Engine) -> None:
    """Rows of a clean batch go out together: one INSERT per table, not one per event."""
    tenant, sub = unique("tenant"), unique("u")
    with session_scope(engine) as s:
        upsert_subscriber(s, tenant, sub, {"email": "ada@example.com"})
        put_flow(s, tenant, "receipt", {"event_type": "order.placed", "steps": [SMS]})
    with recorded_statements(engine) as statements:
        results = accept_many(engine, tenant, [_request(None, sub, n) for n in range(6)])
    inserts = [
        s.split("(")[0].split()[-1].strip('"') for s in statements if s.upper().startswith("INSERT")
    ]
    assert all(isinstance(r, AcceptedEvent) and len(r.notifications) == 1 for r in results)
    assert sorted(inserts) == sorted(["events", "notifications", "deliveries", "delivery_events"])
    with read_scope(engine) as s:
        stored = s.exec(select(Notification).where(col(Notification.tenant_id) == tenant)).all()
    assert len(stored) == 6


def test_a_batch_sees_its_own_notifications_for_throttles_and_exits(engine: Engine) -> None:
    """Written at the end, yet counted by a later event's throttle and stopped by its exit."""
    tenant, sub = unique("tenant"), unique("u")
    throttle = {"limit": 1, "period": "PT1H"}
    with session_scope(engine) as s:
        upsert_subscriber(s, tenant, sub, {"email": "ada@example.com"})
        put_flow(
            s, tenant, "once", {"event_type": "order.placed", "steps": [SMS], "throttle": throttle}
        )
        put_flow(
            s,
            tenant,
            "drip",
            {"event_type": "user.signup", "steps": [SMS], "exit_on": ["order.placed"]},
        )
    signup = AcceptRequest(
        type="user.signup",
        data={},
        actor=None,
        recipients=[RecipientSpec(sub)],
        idempotency_key=None,
        request_fingerprint="fp-signup",
    )
    results = accept_many(engine, tenant, [signup, _request(None, sub, 1), _request(None, sub, 2)])
    joined, first, second = results
    assert isinstance(joined, AcceptedEvent) and isinstance(first, AcceptedEvent)
    assert isinstance(second, AcceptedEvent)
    drip = joined.notifications[0].notification.workflow_id
    assert first.exited == [drip]  # the drip this batch started is stopped by the order
    assert first.notifications[0].runs
    assert not second.notifications[0].runs  # the first order's notification took the slot
