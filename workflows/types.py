"""Workflow inputs and results.

Kept out of the workflow module: the sandbox re-imports that module for every
workflow instance, and building pydantic classes each time is costly; this
module is imported passed-through, once per process.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from activities.delivery import DeliverResult
from core.flows import FlowDefinition
from core.retry import RetrySpec
from core.types import Channel, NotificationStatus


class NotificationInput(BaseModel):
    """Ids plus a snapshot of the flow, so editing a flow never changes a running one."""

    tenant_id: str
    notification_id: str
    event_id: str
    event_type: str
    subscriber_id: str
    flow: FlowDefinition
    # Aligned with flow.steps: the delivery of each send step, None for a control step.
    delivery_ids: list[str | None]
    channel_queues: dict[Channel, str]
    # Each channel's providers in failover order (empty: the worker's first provider only).
    providers: dict[Channel, list[str]] = {}
    # Channel defaults as configured when the event was accepted; steps may override them.
    retry: dict[Channel, RetrySpec]
    # Failed deliveries keep the workflow open this long, waiting for a `retry` signal.
    dead_letter_retention: timedelta = timedelta(0)
    # Set when this notification replays a stored event (HeraldReplay in the UI).
    replay_id: str | None = None
    # Set when a digest runs this notification: the steps after the digest, once,
    # with these events (oldest first) in the templates as digest.events.
    digest_event_ids: list[str] | None = None


class RetryRequest(BaseModel):
    """The `retry` signal's argument; the Temporal UI's Send Signal dialog sends this JSON."""

    channel: Channel | None = None


class NotificationResult(BaseModel):
    status: NotificationStatus
    deliveries: list[DeliverResult]


class StopRequest(BaseModel):
    """The `stop` signal: a cancellation or an exit_on event; later steps are skipped."""

    reason: str = "stopped"


class EngagementSignal(BaseModel):
    """The `engagement` signal: a delivery of this notification reached a stage."""

    delivery_id: str
    stage: str  # delivered, opened or clicked


class StepView(BaseModel):
    index: int
    kind: str  # email, sms, push, webhook, delay, wait, digest
    state: str = "pending"  # pending, running, waiting, scheduled, or a delivery status
    until: datetime | None = None
    detail: str | None = None


class NotificationView(BaseModel):
    """The `status` query: where the notification is and what each step did."""

    status: NotificationStatus
    current_step: int | None = None
    acknowledged: bool = False
    # Engagement signalled so far (delivered, opened, clicked), for `wait until` and `unless`.
    engaged: list[str] = Field(default_factory=list)
    stopped: str | None = None
    steps: list[StepView] = Field(default_factory=list)


class DigestItem(BaseModel):
    """One event's notification, signalled into the digest (`add`)."""

    notification_id: str
    event_id: str
    workflow_id: str
    delivery_ids: list[str | None]


class DigestInput(BaseModel):
    """What every notification of the digest shares; items arrive by signal."""

    template: NotificationInput
    # Carried over by continue-as-new: items not yet sent, and the open window's start.
    carried: list[DigestItem] = Field(default_factory=list)
    opened_at: datetime | None = None


class DigestResult(BaseModel):
    sent: int
    carrier: str | None = None


class ZonePlan(BaseModel):
    timezone: str
    at: datetime


class BroadcastInput(BaseModel):
    """A broadcast's run; continue-as-new carries the cursor and what signals said."""

    tenant_id: str
    # Empty for a run a schedule starts: `spec` (a POST /v1/broadcasts body) opens it.
    broadcast_id: str
    total: int = 0
    send_at: datetime | None = None
    # HH:MM in each recipient's timezone: the timezones are enrolled in turn, each at its
    # own hour (`zones`, `zone` carry the plan across continue-as-new).
    local_time: str | None = None
    zones: list[ZonePlan] | None = None
    zone: int = 0
    spec: dict[str, Any] | None = None
    # Channel queues, retry policies, providers and retention for the notifications it
    # starts; each child gets its notification's ids and flow snapshot laid over it.
    template: NotificationInput
    batch_size: int = 200
    # How many notification starts are in flight at once.
    starts_in_flight: int = 100
    # Batches being sent at once (each its own activity, so several channel workers share
    # a broadcast); a worker killed mid-broadcast repeats at most these.
    batches_in_flight: int = 1
    after: str | None = None
    enrolled: int = 0
    scanned: int = 0
    started: bool = False
    paused: bool = False
    cancelled: bool = False


class BroadcastResult(BaseModel):
    status: str
    enrolled: int
    scanned: int
