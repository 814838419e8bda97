"""Declarative retry policies and per-channel rate limits, against the real server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType

from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.provider import FakeProvider

FAST = {"initial_interval": "PT0.2S", "backoff_coefficient": 1}


async def test_three_500s_then_success_is_sent_after_four_attempts(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email="a@example.com")
    await herald.put_flow(
        "welcome",
        event_type="user.signup",
        steps=[{"channel": "email", "subject": "Hi", "text": "x", "retry": FAST}],
    )
    fresh_provider.fail("sendgrid", 500, times=3)
    event = await herald.wait_event((await herald.publish(type="user.signup", to=[sub]))["id"])
    (d,) = event["notifications"][0]["deliveries"]
    assert (d["status"], d["attempts"]) == ("sent", 4)
    assert [r.status for r in fresh_provider.requests("sendgrid")] == [500, 500, 500, 202]

    # The policy support staff see on the activity: the step's override over the default.
    handle = herald.client.get_workflow_handle(event["notifications"][0]["workflow_id"])
    (scheduled,) = [
        e.activity_task_scheduled_event_attributes
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    policy = scheduled.retry_policy
    assert policy.initial_interval.ToTimedelta() == timedelta(milliseconds=200)
    assert policy.backoff_coefficient == 1
    assert policy.maximum_attempts == herald.settings.retry_email.maximum_attempts
    assert "PermanentProviderError" in policy.non_retryable_error_types
    assert scheduled.schedule_to_close_timeout.ToTimedelta() == (
        herald.settings.retry_email.schedule_to_close
    )


async def test_exhausted_retries_fail_the_delivery_with_the_last_error(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    sub = unique("u")
    await herald.put_subscriber(sub, email="a@example.com")
    await herald.put_flow(
        "welcome",
        event_type="user.signup",
        steps=[
            {
                "channel": "email",
                "subject": "Hi",
                "text": "x",
                "retry": {**FAST, "maximum_attempts": 2},
            }
        ],
    )
    fresh_provider.fail("sendgrid", 503, times=None)
    event = await herald.wait_event((await herald.publish(type="user.signup", to=[sub]))["id"])
    (n,) = event["notifications"]
    (d,) = n["deliveries"]
    assert (n["status"], d["status"], d["attempts"]) == ("failed", "failed", 2)
    assert "503" in d["reason"]
    assert len(fresh_provider.requests("sendgrid")) == 2


async def test_channel_defaults_come_from_settings(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(
        retry_sms={"initial_interval": 0.2, "backoff_coefficient": 1, "maximum_attempts": 3}
    )
    sub = unique("u")
    await herald.put_subscriber(sub, phone="+14155550100")
    await herald.put_flow("otp", event_type="auth.otp", steps=[{"channel": "sms", "text": "x"}])
    fresh_provider.fail("twilio", 500, times=None)
    event = await herald.wait_event((await herald.publish(type="auth.otp", to=[sub]))["id"])
    (d,) = event["notifications"][0]["deliveries"]
    assert (d["status"], d["attempts"]) == ("failed", 3)


async def test_bad_retry_overrides_are_422_naming_the_field(herald: Herald) -> None:
    cases = [
        ({"initial_interval": "-PT1S"}, "initial_interval"),
        ({"backoff_coefficient": 0.5}, "backoff_coefficient"),
        ({"maximum_attempts": -1}, "maximum_attempts"),
        ({"max_tries": 3}, "max_tries"),
    ]
    for retry, field in cases:
        r = await herald.http.put(
            "/v1/flows/bad-retry",
            json={
                "event_type": "x.y",
                "steps": [{"channel": "email", "subject": "s", "text": "t", "retry": retry}],
            },
        )
        assert r.status_code == 422, retry
        locs = [e["loc"] for e in r.json()["detail"]]
        assert ["body", "steps", 0, "email", "retry", field] in locs, (retry, locs)


def _busiest_second(sent: list[float]) -> int:
    """The most sends in any 1-second window, sliding over the whole run."""
    busiest, first = 0, 0
    for last, t in enumerate(sent):
        while t - sent[first] >= 1.0:
            first += 1
        busiest = max(busiest, last - first + 1)
    return busiest


@pytest.mark.parametrize("backlog", [True, False], ids=["backlog", "streaming"])
async def test_sms_rate_limit_holds_in_every_second(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider, backlog: bool
) -> None:
    """40 SMS at 5/s: queued before the SMS worker starts, or arriving while it idles."""
    queues = ["workflows"] if backlog else ["workflows", "sms"]
    herald = await herald_factory(queues=queues, rate_limit_sms=5)
    subs = [unique("u") for _ in range(40)]
    for sid in subs:
        await herald.put_subscriber(sid, phone="+14155550100")
    await herald.put_flow("otp", event_type="auth.otp", steps=[{"channel": "sms", "text": "x"}])
    # All at once: the SMS worker meets a burst after idling, when token buckets are full.
    accepted = await asyncio.gather(*(herald.publish(type="auth.otp", to=[sid]) for sid in subs))
    if backlog:
        handles = [
            herald.client.get_workflow_handle(n["workflow_id"])
            for a in accepted
            for n in (await herald.wait_dispatched(a["id"]))["notifications"]
        ]
        deadline = asyncio.get_running_loop().time() + 20
        for handle in handles:
            while not (await handle.describe()).raw_description.pending_activities:
                assert asyncio.get_running_loop().time() < deadline, f"{handle.id}: no SMS"
                await asyncio.sleep(0.05)
        await herald.serve(["sms"])
    await asyncio.gather(*(herald.wait_event(a["id"], within=60) for a in accepted))

    sent = sorted(r.received_at for r in fresh_provider.requests("twilio") if r.status == 201)
    assert len(sent) == 40
    timeline = " ".join(f"{t - sent[0]:.3f}" for t in sent)
    busiest = _busiest_second(sent)
    # 5 per second, plus 1 for jitter: sends 200 ms apart put six within 1.000 s, so a
    # millisecond of jitter (or a slower first send) lets one window hold six.
    # Unthrottled, all 40 go out in well under a second: a window would hold dozens.
    assert busiest <= 5 + 1, f"{busiest} sends in one second at 5/s; sent at (s): {timeline}"
    # And on average 5 per second.
    assert sent[-1] - sent[0] >= (40 - 5) / 5, f"sent too fast at 5/s; sent at (s): {timeline}"
