"""One workflow per broadcast: page through the audience, start a notification per recipient.

Each batch is enrolled by an activity that commits the notifications and the cursor in
one transaction, then the workflow starts them as abandoned children (their ids are
derived, so a batch repeated after a crash starts nobody twice). Memory stays flat
whatever the audience size, and continue-as-new keeps the history bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ActivityError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.batch_delivery import BatchDeliverInput, BatchDeliverResult, BatchDelivery
    from activities.broadcast import (
        BroadcastActivities,
        EnrolledItem,
        EnrollInput,
        EnrollResult,
        FinishInput,
        OpenInput,
        OpenResult,
        StatusInput,
        ZoneFire,
        ZonesInput,
    )
    from activities.policies import (
        ENROLL_RETRY,
        ENROLL_TIMEOUT,
        RECORD_RETRY,
        RECORD_TIMEOUT,
        delivery_retry,
    )
    from core.flows import FlowDefinition, SendStep, is_send
    from core.types import Channel
    from workflows.notification import NotificationWorkflow, identifying_attributes, summary
    from workflows.types import BroadcastInput, BroadcastResult, NotificationInput, ZonePlan

SA_BROADCAST = SearchAttributeKey.for_keyword("HeraldBroadcast")
# One batch's sends (up to 1,000 recipients; SMS at the channel's rate) per attempt.
BATCH_SEND_TIMEOUT = timedelta(minutes=10)
BATCH_HEARTBEAT = timedelta(seconds=30)
# Batches per run before continue-as-new: each batch adds ~2 history events per recipient.
BATCHES_PER_RUN = 10


@workflow.defn(name="BroadcastWorkflow")
class BroadcastWorkflow:
    def __init__(self) -> None:
        self._paused = False
        self._cancelled = False

    @workflow.run
    async def run(self, inp: BroadcastInput) -> BroadcastResult:
        self._paused = self._paused or inp.paused
        self._cancelled = self._cancelled or inp.cancelled
        if not inp.broadcast_id:
            inp = await self._open(inp)
        if not inp.started and inp.send_at is not None:
            await self._until(inp.send_at, f"send at {inp.send_at:%Y-%m-%d %H:%M} UTC")
        scheduled = not inp.started and (inp.send_at is not None or inp.local_time is not None)
        inp.started = True
        if inp.local_time is not None and inp.zones is None:
            inp.zones = await self._plan_zones(inp)
        batches = 0
        # The next batch's enrollment, started while this one is sent (patched in: older
        # runs enrolled and sent strictly in turn).
        ahead: tuple[str | None, str | None, asyncio.Task[EnrollResult]] | None = None
        # Batches being sent (patched in, when more than one may be: older runs sent one
        # batch and then enrolled the next).
        sending: list[asyncio.Task[None]] = []
        while not self._cancelled:
            zone = None
            if inp.zones is not None:
                if inp.zone >= len(inp.zones):
                    break
                zone = inp.zones[inp.zone]
                if inp.after is None:
                    await self._until(zone.at, f"{inp.local_time} in {zone.timezone}")
                if self._cancelled:
                    break
            if scheduled:  # its (first) hour has come
                scheduled = False
                await self._status(inp, "running")
            self._progress(inp)
            await workflow.wait_condition(lambda: not self._paused or self._cancelled)
            if self._cancelled:
                break
            tz = None if zone is None else zone.timezone
            if ahead is not None and ahead[:2] == (inp.after, tz):
                result = await ahead[2]
            else:
                result = await self._enroll(inp, inp.after, tz)
            ahead = None
            batches += 1
            if (
                result.next_after is not None
                and batches < BATCHES_PER_RUN
                and workflow.patched("broadcast-enroll-ahead")
            ):
                ahead = (
                    result.next_after,
                    tz,
                    asyncio.ensure_future(self._enroll(inp, result.next_after, tz)),
                )
            send = asyncio.ensure_future(self._start(inp, result))
            if inp.batches_in_flight > 1 and workflow.patched("broadcast-batches-in-flight"):
                sending = await self._settle([*sending, send], inp.batches_in_flight - 1)
            else:
                await send
            inp.after = result.next_after
            inp.enrolled += len(result.items)
            inp.scanned += result.scanned
            if result.next_after is None:
                if zone is None:
                    break
                inp.zone += 1  # this timezone is done; the next one waits for its hour
            suggested = ahead is None and workflow.info().is_continue_as_new_suggested()
            if batches >= BATCHES_PER_RUN or suggested:
                sending = await self._settle(sending, 0)
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    inp.model_copy(update={"paused": self._paused, "cancelled": self._cancelled})
                )
        await self._settle(sending, 0)
        if ahead is not None:
            # Cancelled with a batch enrolled ahead: its notifications exist before the
            # cancellation below stops what has not been sent.
            await ahead[2]
        status = "cancelled" if self._cancelled else "completed"
        await workflow.execute_activity_method(
            BroadcastActivities.finish_broadcast,
            FinishInput(broadcast_id=inp.broadcast_id, status=status),
            start_to_close_timeout=ENROLL_TIMEOUT,
            retry_policy=ENROLL_RETRY,
            summary=status,
        )
        workflow.set_current_details(f"{status}: {inp.enrolled:,} enrolled of {inp.total:,}")
        return BroadcastResult(status=status, enrolled=inp.enrolled, scanned=inp.scanned)

    @workflow.signal(name="pause")
    def pause(self) -> None:
        self._paused = True

    @workflow.signal(name="resume")
    def resume(self) -> None:
        self._paused = False

    @workflow.signal(name="cancel")
    def cancel(self) -> None:
        """Enroll nobody else; notifications not sent yet are stopped."""
        self._cancelled = True

    async def _until(self, at: datetime, what: str) -> None:
        """A durable timer that a cancellation cuts short."""
        wait = at - workflow.now()
        if wait <= timedelta(0):
            return
        workflow.set_current_details(f"waiting: {what} ({at:%Y-%m-%d %H:%M} UTC)")
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self._cancelled, timeout=wait, timeout_summary=what
            )

    async def _plan_zones(self, inp: BroadcastInput) -> list[ZonePlan]:
        assert inp.local_time is not None
        # Recorded in history, so the plan never changes on replay.
        fires: list[ZoneFire] = await workflow.execute_activity_method(
            BroadcastActivities.broadcast_timezones,
            ZonesInput(
                broadcast_id=inp.broadcast_id,
                local_time=inp.local_time,
                base=max(workflow.now(), inp.send_at or workflow.now()),
            ),
            start_to_close_timeout=ENROLL_TIMEOUT,
            retry_policy=ENROLL_RETRY,
            summary=f"plan {inp.local_time} in each timezone",
        )
        return [ZonePlan(timezone=f.timezone, at=f.at) for f in fires]

    async def _open(self, inp: BroadcastInput) -> BroadcastInput:
        """A scheduled run: store its broadcast (and event) before anything else."""
        assert inp.spec is not None
        opened: OpenResult = await workflow.execute_activity_method(
            BroadcastActivities.open_broadcast,
            OpenInput(tenant_id=inp.tenant_id, spec=inp.spec),
            start_to_close_timeout=ENROLL_TIMEOUT,
            retry_policy=ENROLL_RETRY,
            summary="open the broadcast",
        )
        template = inp.template.model_copy(
            update={"event_id": opened.event_id, "event_type": opened.event_type}
        )
        workflow.upsert_search_attributes([SA_BROADCAST.value_set(opened.broadcast_id)])
        return inp.model_copy(
            update={
                "broadcast_id": opened.broadcast_id,
                "total": opened.total,
                "send_at": opened.send_at,
                "local_time": opened.local_time,
                "template": template,
            }
        )

    @staticmethod
    async def _settle(sending: list[asyncio.Task[None]], keep: int) -> list[asyncio.Task[None]]:
        """Wait until at most ``keep`` batches are still being sent; a failed one raises."""
        await workflow.wait_condition(lambda: sum(not t.done() for t in sending) <= keep)
        for task in sending:
            if task.done():
                task.result()
        return [t for t in sending if not t.done()]

    async def _enroll(self, inp: BroadcastInput, after: str | None, tz: str | None) -> EnrollResult:
        result: EnrollResult = await workflow.execute_activity_method(
            BroadcastActivities.enroll_batch,
            EnrollInput(
                broadcast_id=inp.broadcast_id, after=after, limit=inp.batch_size, timezone=tz
            ),
            start_to_close_timeout=ENROLL_TIMEOUT,
            retry_policy=ENROLL_RETRY,
            summary=f"enroll after {after or 'the start'}" + ("" if tz is None else f" ({tz})"),
        )
        return result

    def _progress(self, inp: BroadcastInput) -> None:
        state = "paused: " if self._paused else ""
        workflow.set_current_details(
            f"{state}{inp.enrolled:,} / {inp.total:,} enrolled ({inp.scanned:,} scanned)"
        )

    async def _status(self, inp: BroadcastInput, status: str) -> None:
        await workflow.execute_local_activity_method(
            BroadcastActivities.set_broadcast_status,
            StatusInput(broadcast_id=inp.broadcast_id, status=status),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
        )

    async def _start(self, inp: BroadcastInput, result: EnrollResult) -> None:
        """Send the batch: sends-only flows through the providers' batch APIs, the rest
        (timers, conditions) as one notification workflow per recipient."""
        slow = [i for i in result.items if not _fast(result.flows[i.flow_key])]
        fast = [i for i in result.items if _fast(result.flows[i.flow_key])]
        deferred: set[str] = set()
        if fast:
            deferred = await self._send_fast(inp, result, fast)
        later = slow + [i for i in fast if deferred.intersection(filter(None, i.delivery_ids))]
        step = max(1, inp.starts_in_flight)
        for i in range(0, len(later), step):
            chunk = later[i : i + step]
            await asyncio.gather(*(self._child(inp, result, item) for item in chunk))

    async def _send_fast(
        self, inp: BroadcastInput, result: EnrollResult, items: list[EnrolledItem]
    ) -> set[str]:
        """The batch through the providers; a batch that fails past its channel's retry
        policy pauses the broadcast instead of failing it (patched in: it used to fail)."""
        while True:
            try:
                return await self._send_batches(inp, result, items)
            except ActivityError as err:
                if not workflow.patched("broadcast-pause-on-failed-batch"):
                    raise
                # The provider is down or refusing the batch: the unsent recipients stay
                # pending and a resume sends them; what went out is recorded, never resent.
                cause = err.cause or err
                workflow.logger.warning("broadcast %s paused: %s", inp.broadcast_id, cause)
                self._paused = True
                await self._status(inp, "paused")
                workflow.set_current_details(f"paused: a batch failed ({cause}); resume to retry")
                await workflow.wait_condition(lambda: not self._paused or self._cancelled)
                if self._cancelled:
                    return set()
                await self._status(inp, "running")

    async def _send_batches(
        self, inp: BroadcastInput, result: EnrollResult, items: list[EnrolledItem]
    ) -> set[str]:
        """One activity per flow and send step, on the channel's queue and retry policy;
        returns the deliveries that quiet hours deferred."""
        calls = []
        for key in dict.fromkeys(i.flow_key for i in items):
            flow = result.flows[key]
            members = [i for i in items if i.flow_key == key]
            for index, step in enumerate(flow.steps):
                assert isinstance(step, SendStep)
                ids = [d for i in members if (d := i.delivery_ids[index]) is not None]
                channel = Channel(step.channel)
                policy = inp.template.retry[channel].merged(step.retry)
                calls.append(
                    workflow.execute_activity_method(
                        BatchDelivery.deliver_batch,
                        BatchDeliverInput(
                            flow_key=key,
                            category=flow.category,
                            critical=flow.critical,
                            default_locale=flow.default_locale,
                            step=step,
                            delivery_ids=ids,
                            now=workflow.now(),
                        ),
                        task_queue=inp.template.channel_queues[channel],
                        start_to_close_timeout=BATCH_SEND_TIMEOUT,
                        # A worker killed mid-batch is noticed within this, not 10 minutes.
                        heartbeat_timeout=BATCH_HEARTBEAT,
                        retry_policy=delivery_retry(policy),
                        summary=f"{channel.value} to {len(ids):,} ({key}, step {index + 1})",
                    )
                )
        # Every call settles before a failure is raised: a retried batch never overlaps
        # a call of the same batch still running.
        settled = await asyncio.gather(*calls, return_exceptions=True)
        for outcome in settled:
            if isinstance(outcome, BaseException):
                raise outcome
        sent: list[BatchDeliverResult] = settled  # type: ignore[assignment]
        return {d for r in sent for d in r.deferred}

    async def _child(self, inp: BroadcastInput, result: EnrollResult, item: EnrolledItem) -> None:
        child: NotificationInput = inp.template.model_copy(
            update={
                "notification_id": item.notification_id,
                "subscriber_id": item.subscriber_id,
                "flow": result.flows[item.flow_key],
                "delivery_ids": item.delivery_ids,
            }
        )
        attributes = [
            *identifying_attributes(child),
            SearchAttributePair(SA_BROADCAST, inp.broadcast_id),
        ]
        # Started again after a crash mid-batch: the child exists, and that is fine.
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await workflow.start_child_workflow(
                NotificationWorkflow.run,
                child,
                id=item.workflow_id,
                parent_close_policy=ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(attributes),
                static_summary=f"{summary(child)} [broadcast {inp.broadcast_id}]",
            )


def _fast(flow: FlowDefinition) -> bool:
    """Sends only, with no condition and no digest: nothing a workflow per person adds."""
    return all(is_send(s) and getattr(s, "unless", None) is None for s in flow.steps)
