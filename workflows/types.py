"""Workflow inputs and results.

Kept out of the workflow module: the sandbox re-imports that module for every
workflow instance, and building pydantic classes each time is costly; this
module is imported passed-through, once per process.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

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
    delivery_ids: list[str]
    channel_queues: dict[Channel, str]
    # Each channel's providers in failover order (empty: the worker's first provider only).
    providers: dict[Channel, list[str]] = {}
    # Channel defaults as configured when the event was accepted; steps may override them.
    retry: dict[Channel, RetrySpec]
    # Failed deliveries keep the workflow open this long, waiting for a `retry` signal.
    dead_letter_retention: timedelta = timedelta(0)
    # Set when this notification replays a stored event (HeraldReplay in the UI).
    replay_id: str | None = None


class RetryRequest(BaseModel):
    """The `retry` signal's argument; the Temporal UI's Send Signal dialog sends this JSON."""

    channel: Channel | None = None


class NotificationResult(BaseModel):
    status: NotificationStatus
    deliveries: list[DeliverResult]
