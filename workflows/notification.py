"""One workflow per (event, flow, recipient): run the flow's steps, record every outcome."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

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
    from activities.orchestration import FlowActivities, ResolveDelayInput, StopInput
    from activities.policies import (
        FAILOVER_ERROR_TYPES,
        ORPHANED,
        RECORD_RETRY,
        RECORD_TIMEOUT,
        delivery_retry,
    )
    from core.flows import ACKNOWLEDGED, DelayStep, DigestStep, SendStep, Step, WaitStep, is_send
    from core.lifecycle import ENGAGEMENT, implied
    from core.types import Channel, DeliveryStatus, NotificationStatus, outcome
    from workflows.types import (
        EngagementSignal,
        NotificationInput,
        NotificationResult,
        NotificationView,
        RetryRequest,
        StepView,
        StopRequest,
    )

SA_TENANT = SearchAttributeKey.for_keyword("HeraldTenant")
SA_EVENT_TYPE = SearchAttributeKey.for_keyword("HeraldEventType")
SA_FLOW = SearchAttributeKey.for_keyword("HeraldFlow")
SA_SUBSCRIBER = SearchAttributeKey.for_keyword("HeraldSubscriber")
SA_STATUS = SearchAttributeKey.for_keyword("HeraldStatus")
SA_REPLAY = SearchAttributeKey.for_keyword("HeraldReplay")

# Executions started before it recorded a vanished row's failure (retrying forever).
ORPHANED_PATCH = "orphaned-ends-workflow"


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
    channels = "+".join(_kind(s) for s in inp.flow.steps)
    replay = "" if inp.replay_id is None else f" [replay {inp.replay_id}]"
    return f"{inp.event_type} → {inp.flow.key} → {inp.subscriber_id} ({channels}){replay}"


@workflow.defn(name="NotificationWorkflow")
class NotificationWorkflow:
    def __init__(self) -> None:
        # Started with HeraldStatus=running (see identifying_attributes): no upsert needed yet.
        self._status = NotificationStatus.RUNNING
        self._retries: list[RetryRequest] = []
        self._acknowledged = False
        self._engaged: set[str] = set()
        self._stop: str | None = None
        self._view = NotificationView(status=self._status)

    @workflow.run
    async def run(self, inp: NotificationInput) -> NotificationResult:
        steps = inp.flow.steps
        self._view.steps = [StepView(index=i, kind=_kind(s)) for i, s in enumerate(steps)]
        results: dict[int, DeliverResult] = {}
        # A digest's carrier starts after the digest step; everyone else from the top.
        i = 1 if inp.digest_event_ids is not None and inp.flow.digest is not None else 0
        for j in range(i):
            self._mark(j, "done")
        while i < len(steps) and self._stop is None:
            step = steps[i]
            if isinstance(step, DelayStep):
                await self._delay(inp, i, step)
                i += 1
            elif isinstance(step, WaitStep):
                await self._wait(i, step)
                i += 1
            elif isinstance(step, DigestStep):
                # Only reached when a digest flow was started directly (a replay): no batch.
                self._mark(i, "done", detail="not batched")
                i += 1
            else:
                # Sends with no control step between them are independent: run them together.
                group = [i]
                while group[-1] + 1 < len(steps) and _joins(steps[group[-1] + 1]):
                    group.append(group[-1] + 1)
                sent = await asyncio.gather(*(self._step(inp, j) for j in group))
                results.update({j: r for j, r in zip(group, sent, strict=True) if r is not None})
                i = group[-1] + 1
        if self._stop is None:
            await self._dead_letters(inp, results)
        if self._stop is not None:
            await self._skip_rest(inp, results)
        deliveries = [results[k] for k in sorted(results)]
        final = outcome(r.status for r in deliveries)
        if final != self._status:
            self._set_status(final)
        self._view.current_step = None
        workflow.set_current_details(_details(deliveries))
        return NotificationResult(status=final, deliveries=deliveries)

    @workflow.signal(name="retry")
    def retry(self, request: RetryRequest | None = None) -> None:
        """Re-attempt the failed deliveries (all, or one channel's) of a dead letter."""
        self._retries.append(request or RetryRequest())

    @workflow.signal(name="acknowledge")
    def acknowledge(self) -> None:
        """Ends a `wait` early; sends marked `unless: acknowledged` are then skipped."""
        self._acknowledged = True
        self._view.acknowledged = True

    @workflow.signal(name="engagement")
    def engagement(self, signal: EngagementSignal) -> None:
        """A send of this notification was delivered, opened or clicked (ends `wait until`)."""
        self._engaged.update(implied(signal.stage))
        self._view.engaged = [s for s in ENGAGEMENT if s in self._engaged]

    @workflow.signal(name="stop")
    def stop(self, request: StopRequest | None = None) -> None:
        """A cancellation or an exit_on event: skip every step that has not run."""
        if self._stop is None:
            self._stop = (request or StopRequest()).reason
            self._view.stopped = self._stop

    @workflow.query(name="status")
    def status(self) -> NotificationView:
        self._view.status = self._status
        return self._view

    # --- control steps -------------------------------------------------------------

    async def _delay(self, inp: NotificationInput, index: int, step: DelayStep) -> None:
        if step.duration is not None:
            until = workflow.now() + step.duration
            summary = f"delay {_human(step.duration)} until {until:%Y-%m-%d %H:%M} UTC"
        else:
            try:
                resolved = await workflow.execute_local_activity_method(
                    FlowActivities.resolve_delay,
                    ResolveDelayInput(
                        notification_id=inp.notification_id, step=step, now=workflow.now()
                    ),
                    start_to_close_timeout=RECORD_TIMEOUT,
                    retry_policy=RECORD_RETRY,
                    summary=f"step {index + 1}: resolve delay",
                )
            except (ActivityError, ApplicationError) as err:
                # A local activity's failure may arrive unwrapped, as the ApplicationError.
                if _orphaned(err) and workflow.patched(ORPHANED_PATCH):
                    raise self._orphaned(inp, err) from err
                # The event's data cannot say when (e.g. no timestamp): stop, saying why,
                # rather than fail the workflow and leave the later deliveries pending.
                self._mark(index, "failed", detail=_reason(err))
                self._stop = self._view.stopped = f"step {index + 1}: {_reason(err)}"
                return
            until, summary = resolved.until, resolved.summary
        await self._sleep_until(index, until, summary)
        self._mark(index, "done")

    async def _wait(self, index: int, step: WaitStep) -> None:
        if step.until != ACKNOWLEDGED:
            await self._wait_engaged(index, step)
            return
        until = workflow.now() + step.duration
        self._mark(index, "waiting", until=until, detail="until acknowledged")
        self._enter(index, f"waiting up to {_human(step.duration)} for an acknowledgement")
        if not self._acknowledged:
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._acknowledged or self._stop is not None,
                    timeout=step.duration,
                    timeout_summary=f"wait {_human(step.duration)} unless acknowledged",
                )
        self._mark(index, "done", detail="acknowledged" if self._acknowledged else "timed out")

    async def _wait_engaged(self, index: int, step: WaitStep) -> None:
        """Wait for an earlier send to be delivered, opened or clicked, told by a signal."""
        until = workflow.now() + step.duration
        self._mark(index, "waiting", until=until, detail=f"until {step.until}")
        self._enter(index, f"waiting up to {_human(step.duration)} until {step.until}")
        if step.until not in self._engaged:
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: step.until in self._engaged or self._stop is not None,
                    timeout=step.duration,
                    timeout_summary=f"wait {_human(step.duration)} until {step.until}",
                )
        met = step.until in self._engaged
        self._mark(index, "done", detail=step.until if met else "timed out")

    async def _sleep_until(
        self, index: int, until: datetime, summary: str, state: str = "waiting"
    ) -> None:
        """A durable timer that a stop signal cuts short."""
        self._mark(index, state, until=until, detail=summary)
        self._enter(index, summary)
        remaining = until - workflow.now()
        if remaining <= timedelta(0):
            return
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self._stop is not None, timeout=remaining, timeout_summary=summary
            )

    # --- send steps ------------------------------------------------------------------

    async def _step(self, inp: NotificationInput, index: int) -> DeliverResult | None:
        """Send, honouring what the activity decided: quiet hours defer it, a stop ends all."""
        step = inp.flow.steps[index]
        if inp.delivery_ids[index] is None or not is_send(step):
            return None
        self._enter(index, _kind(step))
        while self._stop is None:
            self._mark(index, "running")
            result = await self._send(inp, index)
            if result.stopped is not None:
                self._stop = self._view.stopped = result.stopped
            if result.status == DeliveryStatus.SCHEDULED and result.scheduled_for is not None:
                # Quiet hours: the delivery reads `scheduled` until they end, then is re-checked.
                await self._sleep_until(
                    index, result.scheduled_for, result.reason or "deferred", state="scheduled"
                )
                continue
            self._mark(index, result.status.value, detail=result.reason)
            return result
        return None

    async def _skip_rest(self, inp: NotificationInput, results: dict[int, DeliverResult]) -> None:
        assert self._stop is not None
        skipped = await workflow.execute_local_activity_method(
            FlowActivities.stop_notification,
            StopInput(notification_id=inp.notification_id, reason=self._stop),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY,
            summary=f"stopped: {self._stop}"[:200],
        )
        by_id = {r.delivery_id: r for r in skipped}
        for index, delivery_id in enumerate(inp.delivery_ids):
            if delivery_id in by_id:
                results[index] = by_id[delivery_id]
                self._mark(index, "skipped", detail=self._stop)
            elif delivery_id is None and self._view.steps[index].state == "pending":
                self._mark(index, "skipped", detail=self._stop)  # a control step never reached

    async def _dead_letters(
        self, inp: NotificationInput, results: dict[int, DeliverResult]
    ) -> None:
        while self._stop is None and (
            failed := [i for i, r in results.items() if r.status == DeliveryStatus.FAILED]
        ):
            # A dead letter: stay open so support can fix the cause and send `retry`.
            self._set_status(NotificationStatus.FAILED)
            workflow.set_current_details(
                _details(list(results.values()), waiting=inp.dead_letter_retention)
            )
            request = await self._next_retry(inp.dead_letter_retention)
            if request is None:
                return
            chosen = [i for i in failed if request.channel in (None, results[i].channel)]
            if not chosen:
                continue
            self._set_status(NotificationStatus.RUNNING)
            for i in chosen:
                delivery_id = inp.delivery_ids[i]
                assert delivery_id is not None
                await workflow.execute_local_activity_method(
                    DeliveryActivities.reopen_delivery,
                    ReopenInput(delivery_id=delivery_id, reason="retry requested"),
                    start_to_close_timeout=RECORD_TIMEOUT,
                    retry_policy=RECORD_RETRY,
                    summary=f"reopen step {i + 1}",
                )
            # Through _step, so quiet hours and stops apply to a retry as to a first send.
            retried = await asyncio.gather(*(self._step(inp, i) for i in chosen))
            for i, result in zip(chosen, retried, strict=True):
                if result is not None:
                    results[i] = result

    async def _next_retry(self, retention: timedelta) -> RetryRequest | None:
        if not self._retries and retention > timedelta(0):
            try:
                await workflow.wait_condition(
                    lambda: bool(self._retries) or self._stop is not None,
                    timeout=retention,
                    timeout_summary="dead letter: waiting for a retry signal",
                )
            except TimeoutError:
                return None
        return self._retries.pop(0) if self._retries else None

    def _set_status(self, status: NotificationStatus) -> None:
        self._status = status
        workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])

    def _enter(self, index: int, what: str) -> None:
        self._view.current_step = index
        total = len(self._view.steps)
        workflow.set_current_details(f"step {index + 1}/{total}: {what}")

    def _mark(
        self, index: int, state: str, *, until: datetime | None = None, detail: str | None = None
    ) -> None:
        view = self._view.steps[index]
        view.state, view.until, view.detail = state, until, detail

    async def _send(self, inp: NotificationInput, index: int) -> DeliverResult:
        """Run one step, failing over through the channel's providers in priority order."""
        delivery_id = inp.delivery_ids[index]
        step = inp.flow.steps[index]
        assert delivery_id is not None and isinstance(step, SendStep)
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
                        notification_id=inp.notification_id,
                        flow_key=inp.flow.key,
                        category=inp.flow.category,
                        critical=inp.flow.critical,
                        step=step,
                        provider=provider,
                        fallback=fallback,
                        prior_attempts=attempts,
                        default_locale=inp.flow.default_locale,
                        digest_event_ids=inp.digest_event_ids,
                        unless_acknowledged=step.unless == ACKNOWLEDGED,
                        acknowledged=self._acknowledged,
                        unless=step.unless if step.unless in ENGAGEMENT else None,
                        engaged=sorted(self._engaged),
                        now=workflow.now(),
                    ),
                    task_queue=inp.channel_queues[channel],
                    start_to_close_timeout=policy.start_to_close,
                    schedule_to_close_timeout=policy.schedule_to_close,
                    retry_policy=delivery_retry(policy),
                    summary=f"step {index + 1}: {channel.value}{via}",
                )
            except ActivityError as err:
                if _orphaned(err) and workflow.patched(ORPHANED_PATCH):
                    raise self._orphaned(inp, err) from err
                attempts = max(attempts, _attempts(err))
                if fallback is None or not _fails_over(err):
                    return await self._record_failure(inp, index, _reason(err))
                workflow.logger.info("%s failed over to %s: %s", provider, fallback, _reason(err))
        raise AssertionError("unreachable: the last provider has no fallback")

    async def _record_failure(
        self, inp: NotificationInput, index: int, reason: str
    ) -> DeliverResult:
        delivery_id = inp.delivery_ids[index]
        assert delivery_id is not None
        try:
            return await workflow.execute_local_activity_method(
                DeliveryActivities.record_failure,
                RecordFailureInput(delivery_id=delivery_id, reason=reason),
                start_to_close_timeout=RECORD_TIMEOUT,
                retry_policy=RECORD_RETRY,
                summary=f"record step {index + 1} failed",
            )
        except (ActivityError, ApplicationError) as err:
            if _orphaned(err) and workflow.patched(ORPHANED_PATCH):
                raise self._orphaned(inp, err) from err
            raise

    def _orphaned(
        self, inp: NotificationInput, err: ActivityError | ApplicationError
    ) -> ApplicationError:
        """The notification's rows are gone: fail the execution, saying so, and stop."""
        self._set_status(NotificationStatus.FAILED)
        reason = f"notification {inp.notification_id} is orphaned: {_reason(err)}"
        workflow.set_current_details(reason)
        return ApplicationError(reason, type=ORPHANED, non_retryable=True)


def _orphaned(err: ActivityError | ApplicationError) -> bool:
    cause = err if isinstance(err, ApplicationError) else err.cause
    return isinstance(cause, ApplicationError) and cause.type == ORPHANED


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


def _joins(step: Step) -> bool:
    """A send runs with the one before it, unless it depends on that one's engagement."""
    return is_send(step) and getattr(step, "unless", None) not in ENGAGEMENT


def _kind(step: Step) -> str:
    return step.channel.value if isinstance(step, SendStep) else step.type


def _human(d: timedelta) -> str:
    secs = int(d.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size and secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{d.total_seconds():g}s"


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


def _reason(err: ActivityError | ApplicationError) -> str:
    cause = err if isinstance(err, ApplicationError) else err.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause or err)
