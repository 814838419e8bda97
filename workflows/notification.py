"""One workflow per (event, flow, recipient): run the flow's steps, record every outcome."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributePair
from temporalio.exceptions import ActivityError, ApplicationError, RetryState

with workflow.unsafe.imports_passed_through():
    from activities.delivery import (
        DeliverInput,
        DeliverResult,
        DeliveryActivities,
        RecordFailureInput,
        ReopenInput,
    )
    from activities.policies import (
        FAILOVER_ERROR_TYPES,
        RECORD_RETRY,
        RECORD_TIMEOUT,
        delivery_retry,
    )
    from core.types import Channel, DeliveryStatus, NotificationStatus, outcome
    from workflows.types import NotificationInput, NotificationResult, RetryRequest

SA_TENANT = SearchAttributeKey.for_keyword("HeraldTenant")
SA_EVENT_TYPE = SearchAttributeKey.for_keyword("HeraldEventType")
SA_FLOW = SearchAttributeKey.for_keyword("HeraldFlow")
SA_SUBSCRIBER = SearchAttributeKey.for_keyword("HeraldSubscriber")
SA_STATUS = SearchAttributeKey.for_keyword("HeraldStatus")
SA_REPLAY = SearchAttributeKey.for_keyword("HeraldReplay")


def identifying_attributes(inp: NotificationInput) -> list[SearchAttributePair[str]]:
    """Set at start so the UI can filter a notification before its first task runs; no PII."""
    pairs = [
        SearchAttributePair(SA_TENANT, inp.tenant_id),
        SearchAttributePair(SA_EVENT_TYPE, inp.event_type),
        SearchAttributePair(SA_FLOW, inp.flow.key),
        SearchAttributePair(SA_SUBSCRIBER, inp.subscriber_id),
        SearchAttributePair(SA_STATUS, NotificationStatus.RUNNING.value),
    ]
    if inp.replay_id is not None:
        pairs.append(SearchAttributePair(SA_REPLAY, inp.replay_id))
    return pairs


def summary(inp: NotificationInput) -> str:
    channels = "+".join(s.channel.value for s in inp.flow.steps)
    replay = "" if inp.replay_id is None else f" [replay {inp.replay_id}]"
    return f"{inp.event_type} → {inp.flow.key} → {inp.subscriber_id} ({channels}){replay}"


@workflow.defn(name="NotificationWorkflow")
class NotificationWorkflow:
    def __init__(self) -> None:
        # Started with HeraldStatus=running (see identifying_attributes): no upsert needed yet.
        self._status = NotificationStatus.RUNNING
        self._retries: list[RetryRequest] = []

    @workflow.run
    async def run(self, inp: NotificationInput) -> NotificationResult:
        workflow.set_current_details(f"sending: {summary(inp)}")
        # Steps with no control step between them are independent sends: run them together.
        results = list(
            await asyncio.gather(*(self._send(inp, i) for i in range(len(inp.delivery_ids))))
        )
        while failed := [i for i, r in enumerate(results) if r.status == DeliveryStatus.FAILED]:
            # A dead letter: stay open so support can fix the cause and send `retry`.
            self._set_status(NotificationStatus.FAILED)
            workflow.set_current_details(_details(results, waiting=inp.dead_letter_retention))
            request = await self._next_retry(inp.dead_letter_retention)
            if request is None:
                break
            chosen = [i for i in failed if request.channel in (None, results[i].channel)]
            if not chosen:
                continue
            self._set_status(NotificationStatus.RUNNING)
            for i in chosen:
                await workflow.execute_local_activity_method(
                    DeliveryActivities.reopen_delivery,
                    ReopenInput(delivery_id=inp.delivery_ids[i], reason="retry requested"),
                    start_to_close_timeout=RECORD_TIMEOUT,
                    retry_policy=RECORD_RETRY,
                    summary=f"reopen step {i + 1}",
                )
            retried = await asyncio.gather(*(self._send(inp, i) for i in chosen))
            for i, result in zip(chosen, retried, strict=True):
                results[i] = result
        final = outcome(r.status for r in results)
        if final != self._status:
            self._set_status(final)
        workflow.set_current_details(_details(results))
        return NotificationResult(status=final, deliveries=results)

    @workflow.signal(name="retry")
    def retry(self, request: RetryRequest | None = None) -> None:
        """Re-attempt the failed deliveries (all, or one channel's) of a dead letter."""
        self._retries.append(request or RetryRequest())

    @workflow.query(name="status")
    def status(self) -> NotificationStatus:
        return self._status

    async def _next_retry(self, retention: timedelta) -> RetryRequest | None:
        if not self._retries and retention > timedelta(0):
            try:
                await workflow.wait_condition(
                    lambda: bool(self._retries),
                    timeout=retention,
                    timeout_summary="dead letter: waiting for a retry signal",
                )
            except TimeoutError:
                return None
        return self._retries.pop(0) if self._retries else None

    def _set_status(self, status: NotificationStatus) -> None:
        self._status = status
        workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])

    async def _send(self, inp: NotificationInput, index: int) -> DeliverResult:
        """Run one step, failing over through the channel's providers in priority order."""
        delivery_id = inp.delivery_ids[index]
        step = inp.flow.steps[index]
        channel = Channel(step.channel)
        policy = inp.retry[channel].merged(step.retry)
        providers: list[str | None] = list(inp.providers.get(channel) or ())
        if not providers:
            providers = [None]
        attempts = 0
        for n, provider in enumerate(providers):
            fallback = providers[n + 1] if n + 1 < len(providers) else None
            via = "" if provider is None else f" via {provider}"
            try:
                return await workflow.execute_activity_method(
                    DeliveryActivities.deliver,
                    DeliverInput(
                        delivery_id=delivery_id,
                        flow_key=inp.flow.key,
                        category=inp.flow.category,
                        critical=inp.flow.critical,
                        step=step,
                        provider=provider,
                        fallback=fallback,
                        prior_attempts=attempts,
                    ),
                    task_queue=inp.channel_queues[channel],
                    start_to_close_timeout=policy.start_to_close,
                    schedule_to_close_timeout=policy.schedule_to_close,
                    retry_policy=delivery_retry(policy),
                    summary=f"step {index + 1}: {channel.value}{via}",
                )
            except ActivityError as err:
                attempts = max(attempts, _attempts(err))
                if fallback is None or not _fails_over(err):
                    return await self._record_failure(delivery_id, index, _reason(err))
                workflow.logger.info("%s failed over to %s: %s", provider, fallback, _reason(err))
        raise AssertionError("unreachable: the last provider has no fallback")

    async def _record_failure(self, delivery_id: str, index: int, reason: str) -> DeliverResult:
        return await workflow.execute_local_activity_method(
            DeliveryActivities.record_failure,
            RecordFailureInput(delivery_id=delivery_id, reason=reason),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=f"record step {index + 1} failed",
        )


def _fails_over(err: ActivityError) -> bool:
    """A provider-level refusal, or a policy used up: worth trying the next provider."""
    if err.retry_state in (RetryState.MAXIMUM_ATTEMPTS_REACHED, RetryState.TIMEOUT):
        return True
    cause = err.cause
    return isinstance(cause, ApplicationError) and cause.type in FAILOVER_ERROR_TYPES


def _attempts(err: ActivityError) -> int:
    """Attempts the failed activity recorded (the deliver activity's last detail)."""
    cause: BaseException | None = err.cause
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.__cause__
    if isinstance(cause, ApplicationError) and cause.details:
        last = cause.details[-1]
        if isinstance(last, int):
            return last
    return 0


def _details(results: list[DeliverResult], waiting: timedelta | None = None) -> str:
    lines = [_line(r) for r in results]
    if waiting:
        lines.append(
            f"failed deliveries wait up to {waiting} for a `retry` signal "
            '(optional input: {"channel": "sms"})'
        )
    return "\n".join(lines)


def _line(r: DeliverResult) -> str:
    return f"{r.channel.value}: {r.status.value}" + (f" ({r.reason})" if r.reason else "")


def _reason(err: ActivityError) -> str:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause or err)
