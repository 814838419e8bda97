"""One digest per (flow, subscriber, key): events arrive by signal-with-start, one send.

Signal-with-start is atomic per workflow id, so a burst of events in the same second
lands in one digest (Novu #2569), and an event that arrives while a window is closing
is carried into the next run instead of being lost.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import TypedSearchAttributes
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.orchestration import ClaimDigestInput, FlowActivities
    from activities.policies import RECORD_RETRY, RECORD_TIMEOUT
    from core.types import NotificationStatus
    from workflows.notification import SA_STATUS, NotificationWorkflow, identifying_attributes
    from workflows.types import DigestInput, DigestItem, DigestResult


@workflow.defn(name="DigestWorkflow")
class DigestWorkflow:
    def __init__(self) -> None:
        self._items: list[DigestItem] = []
        self._seen: set[str] = set()

    @workflow.signal(name="add")
    def add(self, item: DigestItem) -> None:
        """One event's notification; a re-dispatched duplicate is ignored."""
        if item.notification_id not in self._seen:
            self._seen.add(item.notification_id)
            self._items.append(item)

    @workflow.query(name="pending")
    def pending(self) -> int:
        return len(self._items)

    @workflow.run
    async def run(self, inp: DigestInput) -> DigestResult:
        for item in inp.carried:
            self.add(item)
        digest = inp.template.flow.digest
        assert digest is not None, "a digest flow starts with a digest step"
        opened = inp.opened_at or workflow.now()
        closes = opened + digest.window
        summary = f"digest window until {closes:%Y-%m-%d %H:%M:%S} UTC"
        workflow.set_current_details(f"collecting events: {summary}")
        remaining = closes - workflow.now()
        if remaining > timedelta(0):
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: (
                        len(self._items) >= digest.max_items
                        or workflow.info().is_continue_as_new_suggested()
                    ),
                    timeout=remaining,
                    timeout_summary=summary,
                )
        if len(self._items) < digest.max_items and workflow.now() < closes:
            # History is long: move on with what is pending and the same window.
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(
                DigestInput(
                    template=inp.template,
                    carried=self._items,
                    opened_at=opened,
                )
            )
        batch = self._items[: digest.max_items]
        # One claim per run, so the run names it: a re-run after a lost completion (a
        # crash) gets the same set back. Only the input changes, not the commands.
        info = workflow.info()
        claimed = await workflow.execute_local_activity_method(
            FlowActivities.claim_digest,
            ClaimDigestInput(
                notification_ids=[i.notification_id for i in batch],
                claim_id=f"{info.workflow_id}/{info.run_id}",
            ),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=f"close digest of {len(batch)} event(s)",
        )
        carrier: DigestItem | None = None
        if claimed:
            by_id = {i.notification_id: i for i in batch}
            carrier = by_id[claimed[0]]
            events = [by_id[n].event_id for n in claimed]
            child = inp.template.model_copy(
                update={
                    "notification_id": carrier.notification_id,
                    "event_id": carrier.event_id,
                    "delivery_ids": carrier.delivery_ids,
                    "digest_event_ids": events,
                }
            )
            # Abandoned, so the next window need not wait for this send (or its dead letter).
            await workflow.start_child_workflow(
                NotificationWorkflow.run,
                child,
                id=carrier.workflow_id,
                parent_close_policy=ParentClosePolicy.ABANDON,
                search_attributes=TypedSearchAttributes(identifying_attributes(child)),
                static_summary=f"digest of {len(events)} event(s) for {child.subscriber_id}",
            )
        workflow.set_current_details(f"sent a digest of {len(claimed)} event(s)")
        # Whatever arrived while this window closed opens the next one, never lost.
        await workflow.wait_condition(workflow.all_handlers_finished)
        leftover = self._items[len(batch) :]
        if leftover:
            workflow.continue_as_new(DigestInput(template=inp.template, carried=leftover))
        status = NotificationStatus.SENT if claimed else NotificationStatus.SKIPPED
        workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])
        return DigestResult(
            sent=len(claimed), carrier=None if carrier is None else carrier.notification_id
        )
