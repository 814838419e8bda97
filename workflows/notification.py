"""One workflow per (event, flow, recipient): run the flow's steps, record every outcome."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributePair
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.delivery import (
        DeliverInput,
        DeliverResult,
        DeliveryActivities,
        RecordFailureInput,
    )
    from activities.policies import (
        DELIVERY_ATTEMPT_TIMEOUT,
        RECORD_RETRY,
        RECORD_TIMEOUT,
        delivery_retry,
    )
    from core.types import Channel, NotificationStatus, outcome
    from workflows.types import NotificationInput, NotificationResult

SA_TENANT = SearchAttributeKey.for_keyword("HeraldTenant")
SA_EVENT_TYPE = SearchAttributeKey.for_keyword("HeraldEventType")
SA_FLOW = SearchAttributeKey.for_keyword("HeraldFlow")
SA_SUBSCRIBER = SearchAttributeKey.for_keyword("HeraldSubscriber")
SA_STATUS = SearchAttributeKey.for_keyword("HeraldStatus")


def identifying_attributes(inp: NotificationInput) -> list[SearchAttributePair[str]]:
    """Set at start so the UI can filter a notification before its first task runs; no PII."""
    return [
        SearchAttributePair(SA_TENANT, inp.tenant_id),
        SearchAttributePair(SA_EVENT_TYPE, inp.event_type),
        SearchAttributePair(SA_FLOW, inp.flow.key),
        SearchAttributePair(SA_SUBSCRIBER, inp.subscriber_id),
        SearchAttributePair(SA_STATUS, NotificationStatus.RUNNING.value),
    ]


def summary(inp: NotificationInput) -> str:
    channels = "+".join(s.channel.value for s in inp.flow.steps)
    return f"{inp.event_type} → {inp.flow.key} → {inp.subscriber_id} ({channels})"


@workflow.defn(name="NotificationWorkflow")
class NotificationWorkflow:
    def __init__(self) -> None:
        # Started with HeraldStatus=running (see identifying_attributes): no upsert needed yet.
        self._status = NotificationStatus.RUNNING

    @workflow.run
    async def run(self, inp: NotificationInput) -> NotificationResult:
        workflow.set_current_details(f"sending: {summary(inp)}")
        # Steps with no control step between them are independent sends: run them together.
        results = await asyncio.gather(
            *(self._send(inp, i, delivery_id) for i, delivery_id in enumerate(inp.delivery_ids))
        )
        final = outcome(r.status for r in results)
        self._set_status(final)
        workflow.set_current_details("\n".join(_line(r) for r in results))
        return NotificationResult(status=final, deliveries=list(results))

    @workflow.query(name="status")
    def status(self) -> NotificationStatus:
        return self._status

    def _set_status(self, status: NotificationStatus) -> None:
        self._status = status
        workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])

    async def _send(self, inp: NotificationInput, index: int, delivery_id: str) -> DeliverResult:
        step = inp.flow.steps[index]
        channel = Channel(step.channel)
        policy = inp.retry[channel].merged(step.retry)
        try:
            return await workflow.execute_activity_method(
                DeliveryActivities.deliver,
                DeliverInput(
                    delivery_id=delivery_id,
                    flow_key=inp.flow.key,
                    category=inp.flow.category,
                    critical=inp.flow.critical,
                    step=step,
                ),
                task_queue=inp.channel_queues[channel],
                start_to_close_timeout=DELIVERY_ATTEMPT_TIMEOUT,
                schedule_to_close_timeout=policy.schedule_to_close,
                retry_policy=delivery_retry(policy),
                summary=f"step {index + 1}: {channel.value}",
            )
        except ActivityError as err:
            return await workflow.execute_local_activity_method(
                DeliveryActivities.record_failure,
                RecordFailureInput(delivery_id=delivery_id, reason=_reason(err)),
                start_to_close_timeout=RECORD_TIMEOUT,
                retry_policy=RECORD_RETRY,
                summary=f"record step {index + 1} failed",
            )


def _line(r: DeliverResult) -> str:
    return f"{r.channel.value}: {r.status.value}" + (f" ({r.reason})" if r.reason else "")


def _reason(err: ActivityError) -> str:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause or err)
