"""The digest claim is idempotent: a re-run after a lost completion takes the same set."""

from __future__ import annotations

from activities.orchestration import ClaimDigestInput, FlowActivities
from tests.conftest import Herald, store_undispatched, unique

DIGEST_FLOW = {
    "event_type": "comment.created",
    "steps": [
        {"type": "digest", "window": "PT1H"},
        {"channel": "email", "subject": "{{ digest.count }} new", "text": "x"},
    ],
}


async def _pending(herald: Herald, count: int) -> list[str]:
    """Notifications of a digest flow, stored but never started: nothing else claims them."""
    sub = unique("u")
    await herald.put_subscriber(sub, email=f"{sub}@example.com")
    await herald.put_flow(unique("digest"), **DIGEST_FLOW)
    accepted = [store_undispatched(herald, "comment.created", sub) for _ in range(count)]
    return [a.notifications[0].notification.id for a in accepted]


async def test_a_replayed_claim_returns_the_same_full_set(herald: Herald) -> None:
    ids = await _pending(herald, 3)
    activities = FlowActivities(herald.engine)
    claim = ClaimDigestInput(notification_ids=ids, claim_id=unique("digest") + "/run-1")

    first = activities.claim_digest(claim)
    # The commit landed but the completion was lost: the workflow runs the claim again.
    replayed = activities.claim_digest(claim)

    assert first == ids
    assert replayed == ids


async def test_another_claim_cannot_take_claimed_notifications(herald: Herald) -> None:
    ids = await _pending(herald, 2)
    activities = FlowActivities(herald.engine)
    assert (
        activities.claim_digest(ClaimDigestInput(notification_ids=ids, claim_id=unique("a"))) == ids
    )
    # The carrier's delivery is still pending until its send: it is no less taken.
    assert (
        activities.claim_digest(ClaimDigestInput(notification_ids=ids, claim_id=unique("b"))) == []
    )
