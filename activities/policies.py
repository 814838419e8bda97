"""Every retry policy and timeout a workflow uses, named and kept in one place.

They show up in the Temporal UI on each activity's details, so support staff
can read what Herald will do next without opening code.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from core.types import Channel

# One attempt at a provider call, including the SDK's own connect/read timeouts.
DELIVERY_ATTEMPT_TIMEOUT = timedelta(seconds=60)

# Failures that can never succeed by retrying; adapters raise them as non-retryable too.
PERMANENT_ERROR_TYPES = ["PermanentProviderError", "TemplateError"]

EMAIL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    maximum_attempts=10,
    non_retryable_error_types=PERMANENT_ERROR_TYPES,
)
SMS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=8,
    non_retryable_error_types=PERMANENT_ERROR_TYPES,
)
PUSH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=8,
    non_retryable_error_types=PERMANENT_ERROR_TYPES,
)
WEBHOOK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    maximum_attempts=12,
    non_retryable_error_types=PERMANENT_ERROR_TYPES,
)

CHANNEL_RETRY: dict[Channel, RetryPolicy] = {
    Channel.EMAIL: EMAIL_RETRY,
    Channel.SMS: SMS_RETRY,
    Channel.PUSH: PUSH_RETRY,
    Channel.WEBHOOK: WEBHOOK_RETRY,
}

# Give up on a channel after this long, whatever the attempt count.
CHANNEL_DEADLINE: dict[Channel, timedelta] = {
    Channel.EMAIL: timedelta(hours=1),
    Channel.SMS: timedelta(minutes=30),
    Channel.PUSH: timedelta(minutes=30),
    Channel.WEBHOOK: timedelta(hours=2),
}

# Bookkeeping against our own database: retry briefly, it is local and cheap.
RECORD_TIMEOUT = timedelta(seconds=15)
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=20,
)
