"""Digest: a burst of events for one subscriber becomes one message when the window closes."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Herald, unique
from tests.fakes.provider import FakeProvider
from tests.histories import keep_first, keep_history

DIGEST_FLOW: dict[str, Any] = {
    "event_type": "comment.created",
    "steps": [
        {"type": "digest", "window": "PT3S", "key": "{{ data.thread }}"},
        {
            "channel": "email",
            "subject": "{{ digest.count }} new comments",
            "text": "{% for e in digest.events %}{{ e.data.n }},{% endfor %}",
        },
    ],
}


async def _subscriber_with_digest(herald: Herald, max_items: int | None = None) -> str:
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    digest = dict(DIGEST_FLOW["steps"][0])
    if max_items is not None:
        digest["max_items"] = max_items
    await herald.put_flow("comments", **{**DIGEST_FLOW, "steps": [digest, DIGEST_FLOW["steps"][1]]})
    return sub


async def _comment_burst(herald: Herald, sub: str, threads: list[str]) -> list[str]:
    """One comment event per thread entry, all at once; ``n`` is the position."""
    published = await asyncio.gather(
        *(
            herald.publish(type="comment.created", to=[sub], data={"thread": t, "n": n})
            for n, t in enumerate(threads)
        )
    )
    return [p["id"] for p in published]


async def _all_final(herald: Herald, event_ids: list[str], within: float = 30.0) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        events = [(await herald.http.get(f"/v1/events/{e}")).json() for e in event_ids]
        notifications = [n for e in events for n in e["notifications"]]
        if all(n["status"] in ("sent", "skipped", "failed") for n in notifications):
            return notifications
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError([n["status"] for n in notifications])
        await asyncio.sleep(0.2)


async def test_fifty_events_in_one_second_make_exactly_one_digest(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = await _subscriber_with_digest(herald)

    notifications = await _all_final(herald, await _comment_burst(herald, sub, ["t1"] * 50))

    (mail,) = fresh_provider.requests("sendgrid")
    assert mail.json["subject"] == "50 new comments"
    text = mail.json["content"][0]["value"]
    assert sorted(int(n) for n in text.strip(",").split(",")) == list(range(50))
    sent = [n for n in notifications if n["status"] == "sent"]
    assert len(sent) == 1
    carrier = sent[0]["id"]
    others = [n for n in notifications if n["id"] != carrier]
    assert len(others) == 49
    assert {n["deliveries"][0]["reason"] for n in others} == {
        f"digested into notification {carrier}"
    }
    # The window has closed for good: nothing else goes out.
    await asyncio.sleep(4)
    assert len(fresh_provider.requests("sendgrid")) == 1
    digest = f'HeraldTenant="{herald.tenant}" AND WorkflowType="DigestWorkflow"'
    await keep_first(herald.client, digest, "digest-window")
    await keep_history(herald.client, sent[0]["workflow_id"], "notification-digest-carrier")


async def test_different_keys_make_separate_digests(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = await _subscriber_with_digest(herald)

    await _all_final(herald, await _comment_burst(herald, sub, ["a", "b", "a", "b", "a"]))

    subjects = sorted(r.json["subject"] for r in fresh_provider.requests("sendgrid"))
    assert subjects == ["2 new comments", "3 new comments"]


async def test_an_event_after_the_window_opens_a_new_digest(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = await _subscriber_with_digest(herald)

    first = await herald.publish(type="comment.created", to=[sub], data={"thread": "t", "n": 1})
    await _all_final(herald, [first["id"]])
    second = await herald.publish(type="comment.created", to=[sub], data={"thread": "t", "n": 2})
    await _all_final(herald, [second["id"]])

    bodies = [r.json["content"][0]["value"] for r in fresh_provider.requests("sendgrid")]
    assert bodies == ["1,", "2,"]


async def test_max_items_closes_the_window_early_and_the_rest_open_the_next(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    """12 events, at most 5 per digest: 5 + 5 + 2, every event in exactly one digest."""
    sub = await _subscriber_with_digest(herald, max_items=5)

    await _all_final(herald, await _comment_burst(herald, sub, ["t"] * 12))

    mails = fresh_provider.requests("sendgrid")
    assert sorted(m.json["subject"] for m in mails) == [
        "2 new comments",
        "5 new comments",
        "5 new comments",
    ]
    numbers = [int(n) for m in mails for n in m.json["content"][0]["value"].strip(",").split(",")]
    assert sorted(numbers) == list(range(12))
