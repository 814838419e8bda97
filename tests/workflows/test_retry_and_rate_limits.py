"""Declarative retry policies and per-channel rate limits, against the real server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

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


async def test_sms_rate_limit_holds_across_the_task_queue(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(rate_limit_sms=5)
    subs = [unique("u") for _ in range(40)]
    for sid in subs:
        await herald.put_subscriber(sid, phone="+14155550100")
    await herald.put_flow("otp", event_type="auth.otp", steps=[{"channel": "sms", "text": "x"}])
    accepted = [await herald.publish(type="auth.otp", to=[sid]) for sid in subs]
    await asyncio.gather(*(herald.wait_event(a["id"], within=60) for a in accepted))

    sent = sorted(r.received_at for r in fresh_provider.requests("twilio") if r.status == 201)
    assert len(sent) == 40
    # Unthrottled, all 40 go out in well under a second; at 5/s they need about 8 s.
    # Known gap (issue 4): tokens arrive in clusters of 3-4 (one per task-queue
    # partition), so a sliding 1-second window can hold 7-8; the average holds.
    assert sent[-1] - sent[0] >= (40 - 5) / 5
