"""Every retry policy and timeout a workflow uses, built in one place.

Channel defaults are declared in settings (``HERALD_RETRY_<CHANNEL>``) and a flow
step may override them; the result shows in the Temporal UI on each activity, so
support staff can read what Herald will do next without opening code.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from core.retry import RetrySpec

# ApplicationError types the deliver activity raises; the Temporal UI shows them.
TRANSIENT = "TransientProviderError"
# The provider refused (credentials, account, request): the next provider may not.
PERMANENT_PROVIDER = "PermanentProviderError"
# The recipient is at fault (bad number, dead token, gone URL): no provider can help.
PERMANENT_RECIPIENT = "PermanentRecipientError"
PROVIDER_NOT_CONFIGURED = "ProviderNotConfigured"
TEMPLATE_ERROR = "TemplateError"
# The notification's or delivery's row is gone (database reset, erased subscriber): no
# retry can bring it back, and the workflow ends rather than retry recording forever.
ORPHANED = "Orphaned"

# Failures that can never succeed by retrying; adapters raise them as non-retryable too.
PERMANENT_ERROR_TYPES = [
    PERMANENT_PROVIDER,
    PERMANENT_RECIPIENT,
    PROVIDER_NOT_CONFIGURED,
    TEMPLATE_ERROR,
]
# Failures after which the channel's next provider is tried (as is an exhausted policy).
FAILOVER_ERROR_TYPES = frozenset({PERMANENT_PROVIDER, PROVIDER_NOT_CONFIGURED})


def delivery_retry(spec: RetrySpec) -> RetryPolicy:
    """A channel's declarative policy (settings, merged with the step's override)."""
    return RetryPolicy(
        initial_interval=spec.initial_interval,
        backoff_coefficient=spec.backoff_coefficient,
        maximum_interval=spec.maximum_interval,
        maximum_attempts=spec.maximum_attempts,
        non_retryable_error_types=PERMANENT_ERROR_TYPES,
    )


# Bookkeeping against our own database: local and cheap, so retried quickly, and until it
# works: giving up would fail the workflow and leave its deliveries (or a digest's events)
# pending for good, when the database is only briefly away.
RECORD_TIMEOUT = timedelta(seconds=15)
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=0,
)

# Enrolling a broadcast batch: database work only, repeatable (a repeated batch skips
# whom it already enrolled), so it retries until the database is back.
ENROLL_TIMEOUT = timedelta(seconds=30)
ENROLL_RETRY = RECORD_RETRY

# Retention: one batch of deletes per attempt, repeatable (a repeat deletes what is left).
# It gives up after a few minutes: the next day's run picks up where this one stopped.
RETENTION_TIMEOUT = timedelta(minutes=2)
RETENTION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=10,
)
