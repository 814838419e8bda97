"""Start one notification workflow per planned notification; safe to call again."""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.common import TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api.temporal import TemporalGateway, TemporalUnavailableError
from core.flows import FlowDefinition
from core.settings import Settings
from core.types import Channel
from store.events import AcceptedEvent, PlannedNotification
from workflows.notification import (
    NotificationInput,
    NotificationWorkflow,
    identifying_attributes,
    summary,
)

log = logging.getLogger(__name__)


def workflow_input(
    settings: Settings, accepted: AcceptedEvent, planned: PlannedNotification
) -> NotificationInput:
    flow = planned.flow
    n = planned.notification
    return NotificationInput(
        tenant_id=n.tenant_id,
        notification_id=n.id,
        event_id=accepted.event.id,
        event_type=accepted.event.type,
        subscriber_id=n.subscriber_id,
        flow=FlowDefinition.model_validate(
            {
                "key": flow.key,
                "event_type": flow.event_type,
                "category": flow.category,
                "critical": flow.critical,
                "steps": flow.steps,
                "version": flow.version,
            }
        ),
        delivery_ids=planned.delivery_ids,
        channel_queues={c: settings.channel_task_queue(c) for c in Channel},
    )


async def _start(client: Client, settings: Settings, inp: NotificationInput, wf_id: str) -> None:
    try:
        await client.start_workflow(
            NotificationWorkflow.run,
            inp,
            id=wf_id,
            task_queue=settings.workflow_task_queue,
            # A running duplicate is joined; a finished one is never re-run for the same key.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(identifying_attributes(inp)),
            static_summary=summary(inp),
        )
    except WorkflowAlreadyStartedError:
        log.debug("workflow %s already ran; start is a no-op", wf_id)


async def dispatch(gateway: TemporalGateway, settings: Settings, accepted: AcceptedEvent) -> None:
    if not accepted.notifications:
        return
    client = await gateway.client()
    try:
        await asyncio.gather(
            *(
                _start(
                    client,
                    settings,
                    workflow_input(settings, accepted, p),
                    p.notification.workflow_id,
                )
                for p in accepted.notifications
            )
        )
    except RPCError as exc:
        raise TemporalUnavailableError(str(exc)) from exc
