"""The per-tenant bound on webhook sends: bounce at once, come back after a jittered backoff."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.webhooks import TENANT_BUSY, TenantBound, bounce_delay


def _env(attempt: int, policy: RetryPolicy | None) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt, retry_policy=policy)
    return env


def test_a_tenant_over_its_bound_bounces_and_others_do_not() -> None:
    bound = TenantBound(2)
    policy = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0)

    def third_send() -> ApplicationError:
        with bound.hold("a"), bound.hold("a"):
            with bound.hold("b"):  # another tenant is unaffected
                pass
            with pytest.raises(ApplicationError) as info, bound.hold("a"):
                raise AssertionError("a third send of tenant a ran")
            return info.value

    err = _env(1, policy).run(third_send)

    assert err.type == TENANT_BUSY
    assert not err.non_retryable
    assert err.next_retry_delay is not None
    assert timedelta(seconds=1) <= err.next_retry_delay <= timedelta(seconds=3)
    assert "HERALD_WEBHOOK_TENANT_CONCURRENCY" in err.message
    # Every slot was given back, by the failed attempt too.
    assert bound.in_flight("a") == bound.in_flight("b") == 0
    with bound.hold("a"), bound.hold("a"):
        assert bound.in_flight("a") == 2


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 1.0, 3.0), (3, 4.0, 12.0), (10, 30.0, 90.0)],  # 2 s, 8 s, then capped at 60 s
)
def test_the_bounce_delay_follows_the_policy_backoff(attempt: int, low: float, high: float) -> None:
    policy = RetryPolicy(
        initial_interval=timedelta(seconds=2),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=60),
    )
    delays = [_env(attempt, policy).run(bounce_delay).total_seconds() for _ in range(50)]
    assert all(low <= d <= high for d in delays), delays
    assert len(set(delays)) > 1  # jittered: a burst's bounces do not return together
