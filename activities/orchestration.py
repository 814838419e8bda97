"""Local activities that decide a notification's next step from fresh rows.

They run on the workflow worker (short, database-only), take the workflow's own
clock as ``now`` so time-skipping tests and replays see the same decisions, and
write what they decide (skipped, scheduled) so the API shows it at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.delivery import DeliverResult, result_of
from core.flows import ACKNOWLEDGED, DelayStep
from core.preferences import PreferenceSet, decide, next_local, quiet_until
from core.templates import TemplateError, render
from core.types import Channel, DeliveryStatus
from store.db import read_scope, session_scope
from store.deliveries import is_final, transition
from store.models import Delivery
from store.notifications import (
    claim_for_digest,
    mark_stopped,
    schedule,
    skip_unfinished,
    step_context,
)


class GateInput(BaseModel):
    notification_id: str
    delivery_id: str
    now: datetime
    category: str
    flow_key: str
    critical: bool
    unless_acknowledged: bool = False
    # The workflow's own view (the signal may have come before the row was written).
    acknowledged: bool = False


class Gate(BaseModel):
    """``send`` now; ``defer`` until ``until``; ``done`` (skipped or finished); ``stop``."""

    action: Literal["send", "defer", "done", "stop"]
    until: datetime | None = None
    reason: str | None = None
    result: DeliverResult | None = None


class ResolveDelayInput(BaseModel):
    notification_id: str
    step: DelayStep
    now: datetime


class ResolvedDelay(BaseModel):
    until: datetime
    summary: str


class StopInput(BaseModel):
    notification_id: str
    reason: str


class ClaimDigestInput(BaseModel):
    notification_ids: list[str]


class FlowActivities:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @activity.defn(name="gate")
    def gate(self, inp: GateInput) -> Gate:
        """Stopped, acknowledged, opted out, or in quiet hours: decided just before a send."""
        with read_scope(self.engine) as session:
            ctx = step_context(session, inp.notification_id)
            delivery = session.get(Delivery, inp.delivery_id)
            if ctx is None or delivery is None:
                raise ApplicationError(
                    f"notification {inp.notification_id} not found", non_retryable=True
                )
            if is_final(delivery):
                return Gate(action="done", result=result_of(delivery))
            n = ctx.notification
            if n.stopped_at is not None:
                return Gate(action="stop", reason=n.stop_reason or "stopped")
            skip: str | None = None
            if inp.unless_acknowledged and (inp.acknowledged or n.acknowledged_at is not None):
                skip = ACKNOWLEDGED
            prefs = None
            if ctx.preference is not None:
                prefs = PreferenceSet.model_validate(
                    {
                        "channels": ctx.preference.channels,
                        "categories": ctx.preference.categories,
                        "flows": ctx.preference.flows,
                        "quiet_hours": ctx.preference.quiet_hours,
                    }
                )
            if skip is None:
                skip = decide(
                    prefs,
                    channel=Channel(delivery.channel),
                    flow_key=inp.flow_key,
                    category=inp.category,
                    critical=inp.critical,
                )
            until = None
            tz = ctx.subscriber.timezone if ctx.subscriber is not None else "UTC"
            if skip is None and not inp.critical and prefs is not None:
                until = quiet_until(prefs.quiet_hours, inp.now, tz)
        if skip is not None:
            with session_scope(self.engine) as session:
                row = transition(session, inp.delivery_id, DeliveryStatus.SKIPPED, detail=skip)
                return Gate(action="done", reason=skip, result=result_of(row))
        if until is None:
            return Gate(action="send")
        summary = f"quiet hours until {until:%H:%M} {tz}"
        with session_scope(self.engine) as session:
            schedule(session, inp.delivery_id, until.astimezone(UTC), summary)
        return Gate(action="defer", until=until.astimezone(UTC), reason=summary)

    @activity.defn(name="resolve_delay")
    def resolve_delay(self, inp: ResolveDelayInput) -> ResolvedDelay:
        """Turn ``until`` (a template) or ``until_local`` (HH:MM) into a UTC instant."""
        step = inp.step
        with read_scope(self.engine) as session:
            ctx = step_context(session, inp.notification_id)
            if ctx is None:
                raise ApplicationError(
                    f"notification {inp.notification_id} not found", non_retryable=True
                )
            tz = ctx.subscriber.timezone if ctx.subscriber is not None else "UTC"
            data = ctx.event.data
        if step.until_local is not None:
            at = next_local(step.until_local, inp.now, tz)
            return ResolvedDelay(
                until=at.astimezone(UTC), summary=f"send window: until {step.until_local} {tz}"
            )
        if step.until is not None:
            try:
                text = render(step.until, {"data": data}).strip()
                at = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except (TemplateError, ValueError) as exc:
                raise ApplicationError(
                    f"delay until {step.until!r} is not an ISO 8601 timestamp: {exc}",
                    type="BadDelay",
                    non_retryable=True,
                ) from exc
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
            return ResolvedDelay(until=at, summary=f"delay until {at:%Y-%m-%d %H:%M} UTC")
        raise ApplicationError("a delay with a duration needs no resolving", non_retryable=True)

    @activity.defn(name="stop_notification")
    def stop_notification(self, inp: StopInput) -> list[DeliverResult]:
        """Skip what has not run, keep what has; returns the skipped deliveries."""
        with session_scope(self.engine) as session:
            mark_stopped(session, inp.notification_id, inp.reason)
            return [result_of(d) for d in skip_unfinished(session, inp.notification_id, inp.reason)]

    @activity.defn(name="claim_digest")
    def claim_digest(self, inp: ClaimDigestInput) -> list[str]:
        with session_scope(self.engine) as session:
            return claim_for_digest(session, inp.notification_ids)
