"""Local activities for control steps: resolve a delay, stop a notification, close a digest.

They run on the workflow worker (short, database-only) and take the workflow's own
clock as ``now``, so time-skipping tests and replays see the same decisions.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlmodel import col
from temporalio.exceptions import ApplicationError

from activities.defn import uninterrupted
from activities.delivery import DeliverResult, orphaned, result_of
from core.flows import DelayStep
from core.preferences import next_local
from core.templates import TemplateError, render
from store.db import read_scope, session_scope
from store.events import stop_notifications
from store.models import Notification
from store.notifications import claim_for_digest, delay_context, skip_unfinished


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
    # The digest run's own id (workflow id and run id): a re-run returns the same claim.
    claim_id: str | None = None


class FlowActivities:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @uninterrupted("resolve_delay")
    def resolve_delay(self, inp: ResolveDelayInput) -> ResolvedDelay:
        """Turn ``until`` (a template) or ``until_local`` (HH:MM) into a UTC instant."""
        step = inp.step
        with read_scope(self.engine) as session:
            found = delay_context(session, inp.notification_id)
        if found is None:
            raise orphaned(f"notification {inp.notification_id} does not exist")
        tz, data = found
        if step.until_local is not None:
            at = next_local(step.until_local, inp.now, tz)
            return ResolvedDelay(
                until=at.astimezone(UTC), summary=f"send window: until {step.until_local} {tz}"
            )
        if step.until is not None:
            text = ""
            try:
                text = render(step.until, {"data": data}).strip()
                at = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except (TemplateError, ValueError) as exc:
                raise ApplicationError(
                    f"delay until {step.until} gave {text!r}, not an ISO 8601 timestamp ({exc})",
                    type="BadDelay",
                    non_retryable=True,
                ) from exc
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
            return ResolvedDelay(until=at, summary=f"delay until {at:%Y-%m-%d %H:%M} UTC")
        raise ApplicationError("a delay with a duration needs no resolving", non_retryable=True)

    @uninterrupted("stop_notification")
    def stop_notification(self, inp: StopInput) -> list[DeliverResult]:
        """Skip what has not run, keep what has; returns the skipped deliveries."""
        with session_scope(self.engine) as session:
            # Records why, unless the API's stop (cancel, exit_on) already did.
            stop_notifications(session, inp.reason, col(Notification.id) == inp.notification_id)
            return [result_of(d) for d in skip_unfinished(session, inp.notification_id, inp.reason)]

    @uninterrupted("claim_digest")
    def claim_digest(self, inp: ClaimDigestInput) -> list[str]:
        with session_scope(self.engine) as session:
            return claim_for_digest(session, inp.notification_ids, inp.claim_id)
