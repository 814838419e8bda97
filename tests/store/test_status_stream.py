"""The status stream's outbox: the delivery history read behind a gap-safe position."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from core.types import DeliveryStatus
from store.db import session_scope
from store.deliveries import transition
from store.models import DeliveryEvent
from store.status_stream import (
    StatusChange,
    Watermark,
    history_after,
    position,
    save_position,
)
from tests.conftest import unique
from tests.store.test_lifecycle import _delivery


def test_a_new_stream_starts_at_the_newest_row_and_keeps_its_position(engine: Engine) -> None:
    _delivery(engine)
    name = unique("stream")
    with session_scope(engine) as s:
        s.add(DeliveryEvent(tenant_id="t", delivery_id=_delivery(engine).id, status="failed"))
    with session_scope(engine) as s:
        start = position(s, name)
    assert start > 0  # the past is not streamed
    with session_scope(engine) as s:
        save_position(s, name, start + 5)
    with session_scope(engine) as s:
        assert position(s, name) == start + 5


def test_changes_carry_their_delivery_and_leave_the_initial_pending_out(engine: Engine) -> None:
    name = unique("stream")
    with session_scope(engine) as s:
        start = position(s, name)
    d = _delivery(engine, channel="sms")
    with session_scope(engine) as s:
        s.add(DeliveryEvent(tenant_id=d.tenant_id, delivery_id=d.id, status="pending"))
    with session_scope(engine) as s:
        transition(s, d.id, DeliveryStatus.SENT, provider="twilio")
    failed = _delivery(engine)
    with session_scope(engine) as s:
        transition(s, failed.id, DeliveryStatus.FAILED, detail="mailbox does not exist")
    with session_scope(engine) as s:
        rows = [r for r in history_after(s, start, 100) if r[0] > start]
    ours = {d.id, failed.id}
    mine = [(rid, c) for rid, c in rows if c is None or c.delivery_id in ours]
    assert [c.status if c else None for _, c in mine] == [None, "sent", "failed"]
    last = mine[2][1]
    assert last is not None
    assert (last.routing_key, last.reason) == (
        f"{failed.tenant_id}.email.failed",
        "mailbox does not exist",
    )
    sent = mine[1][1]
    assert sent is not None
    assert sent.routing_key == f"{d.tenant_id}.sms.sent"
    assert sent.message_id == f"herald-status-{mine[1][0]}"
    body = sent.body()
    assert (body["flow"], body["subscriber_id"], body["provider"]) == ("welcome", "ada", "twilio")
    assert body["notification_id"] == d.notification_id


def test_the_position_waits_for_a_missing_id_then_gives_up_on_it_after_the_grace() -> None:
    w = Watermark(position=10)
    # 11 and 13 are out; 12 has not committed yet (or was rolled back).
    assert w.settle([11, 13], now=0.0, grace=30) == 11
    assert w.missing == {12: 0.0}
    assert w.done == {13}
    # 12 commits late: published, and the position moves over both.
    assert w.settle([12], now=5.0, grace=30) == 13
    assert (w.done, w.missing) == (set(), {})
    # 15 is out, 14 never appears: after the grace the position moves past it.
    assert w.settle([15], now=10.0, grace=30) == 13
    assert w.settle([], now=39.0, grace=30) == 13
    assert w.settle([], now=40.0, grace=30) == 15


def test_rows_above_the_position_already_published_are_not_published_twice() -> None:
    w = Watermark(position=10)
    w.settle([12], now=0.0, grace=30)
    rows = [(11, None), (12, _change(12)), (13, _change(13))]
    assert [c.id for c in w.fresh(rows)] == [13]


def _change(rid: int) -> StatusChange:
    at = datetime(2026, 11, 24, tzinfo=UTC)
    return StatusChange(
        rid, "t", "d", "n", "e", "s", "f", None, "email", "sent", None, None, "herald", None, at
    )


def test_a_gap_does_not_hold_back_what_follows_it(engine: Engine) -> None:
    name = unique("stream")
    with session_scope(engine) as s:
        start = position(s, name)
    made = [_delivery(engine) for _ in range(4)]
    for d in made:
        with session_scope(engine) as s:
            transition(s, d.id, DeliveryStatus.SENT)
    with session_scope(engine) as s:
        ids = [
            rid
            for rid, c in history_after(s, start, 100)
            if c and c.delivery_id in {d.id for d in made}
        ]
    a, b, c, d_ = ids
    # Say a had not committed when b..d were read: the position waits at a - 1, but the
    # next read goes past d (no re-reading of b..d) and still asks for a.
    w = Watermark(position=a - 1)
    w.settle([b, c, d_], now=0.0, grace=60)
    assert (w.position, w.read_after, set(w.missing)) == (a - 1, d_, {a})
    with session_scope(engine) as s:
        again = [rid for rid, _ in history_after(s, w.read_after, 100, missing=w.missing)]
    assert a in again and not {b, c, d_} & set(again)
