"""Build the Temporal workers; shared by ``worker.py`` and the tests."""

from __future__ import annotations

import compileall
import logging
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.batch_delivery import BatchDelivery
from activities.broadcast import BroadcastActivities
from activities.delivery import DeliveryActivities
from activities.logcontext import LogContextInterceptor
from activities.orchestration import FlowActivities
from activities.pacing import Pacer
from activities.retention import RetentionActivities
from activities.tracking import Tracker
from activities.webhooks import WebhookSends
from channels.registry import build_adapters
from core.settings import Settings
from core.types import Channel
from workflows.broadcast import BroadcastWorkflow
from workflows.digest import DigestWorkflow
from workflows.notification import NotificationWorkflow
from workflows.retention import RetentionWorkflow

WORKFLOWS_QUEUE = "workflows"
ALL_QUEUES = (WORKFLOWS_QUEUE, *(c.value for c in Channel))
# Every workflow the worker serves; the replay test checks each has recorded histories.
WORKFLOW_TYPES = (NotificationWorkflow, DigestWorkflow, BroadcastWorkflow, RetentionWorkflow)

log = logging.getLogger(__name__)


def cache_workflow_bytecode() -> None:
    """Write the workflow modules' bytecode when it is missing.

    The sandbox imports a workflow's module afresh for every execution. Without a .pyc
    (``PYTHONDONTWRITEBYTECODE=1``, common in containers) each of those imports compiles
    the source: py-spy showed it as 13% of the worker's samples at light load.
    """
    package = str(Path(__file__).parent)
    if compileall.compile_dir(package, maxlevels=0, quiet=2):
        return
    # A read-only tree: keep the bytecode under a writable prefix instead.
    sys.pycache_prefix = str(Path(tempfile.gettempdir()) / "herald-pycache")
    if not compileall.compile_dir(package, maxlevels=0, quiet=2):
        log.warning("could not cache the workflows' bytecode; each run compiles them")


def parse_queues(spec: str | None) -> list[str]:
    if not spec:
        return list(ALL_QUEUES)
    queues = [q.strip() for q in spec.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(ALL_QUEUES))
    if unknown or not queues:
        raise ValueError(f"unknown queues {unknown}; choose from {', '.join(ALL_QUEUES)}")
    return list(dict.fromkeys(queues))


def build_workers(
    client: Client,
    settings: Settings,
    engine: Engine,
    queues: Iterable[str] = ALL_QUEUES,
    executor: ThreadPoolExecutor | None = None,
) -> tuple[list[Worker], ThreadPoolExecutor]:
    """One worker per task queue, so each channel scales and rate-limits on its own."""
    queues = list(queues)
    sandboxed = settings.sandboxed_workflows
    if queues:  # every queue runs notifications' workflows (see below)
        log.info("workflows run %s", "in the sandbox" if sandboxed else "without the sandbox")
        if sandboxed:
            cache_workflow_bytecode()
    per_queue = settings.worker_max_concurrent_activities
    executor = executor or ThreadPoolExecutor(
        max_workers=per_queue * len(queues) + 8, thread_name_prefix="herald-activity"
    )
    pacers = {c: Pacer(rate) for c in Channel if (rate := settings.rate_limit_for(c)) is not None}
    acts = DeliveryActivities(
        engine, {}, pacers, Tracker(settings), webhooks=WebhookSends(engine, settings)
    )
    acts.adapters = build_adapters(settings, acts.sandbox_sink)
    batch = BatchDelivery(acts)
    flow_acts = FlowActivities(engine)
    broadcast_acts = BroadcastActivities(engine)
    retention_acts = RetentionActivities(engine)

    def runner() -> WorkflowRunner:
        return SandboxedWorkflowRunner() if sandboxed else UnsandboxedWorkflowRunner()

    # The local activities a notification runs next to its workflow, wherever that runs.
    notification_acts: list[Callable[..., Any]] = [
        acts.record_failure,
        acts.reopen_delivery,
        flow_acts.resolve_delay,
        flow_acts.stop_notification,
    ]
    workers: list[Worker] = []
    for queue in queues:
        if queue == WORKFLOWS_QUEUE:
            workers.append(
                Worker(
                    client,
                    task_queue=settings.workflow_task_queue,
                    workflows=list(WORKFLOW_TYPES),
                    # Short database work next to the workflow, local but for a broadcast's
                    # batches, which may take longer than a workflow task.
                    activities=[
                        *notification_acts,
                        flow_acts.claim_digest,
                        broadcast_acts.open_broadcast,
                        broadcast_acts.enroll_batch,
                        broadcast_acts.broadcast_timezones,
                        broadcast_acts.set_broadcast_status,
                        broadcast_acts.finish_broadcast,
                        retention_acts.purge_batch,
                    ],
                    activity_executor=executor,
                    max_concurrent_local_activities=per_queue,
                    interceptors=[LogContextInterceptor()],
                    workflow_runner=runner(),
                )
            )
        else:
            rate = settings.rate_limit_for(Channel(queue))
            workers.append(
                Worker(
                    client,
                    task_queue=settings.channel_task_queue(Channel(queue)),
                    # A one-channel notification runs here (dispatching.outbox.
                    # notification_queue), so its send starts with the workflow task.
                    workflows=[NotificationWorkflow],
                    activities=[*notification_acts, acts.deliver, batch.deliver_batch],
                    activity_executor=executor,
                    max_concurrent_activities=per_queue,
                    max_concurrent_local_activities=per_queue,
                    workflow_runner=runner(),
                    # An eager send would bypass the server's limit for the queue.
                    disable_eager_activity_execution=rate is not None,
                    interceptors=[LogContextInterceptor()],
                    # Enforced by the server for the whole queue, so it holds across
                    # every worker process serving this channel.
                    max_task_queue_activities_per_second=rate,
                    # The server's token bucket lets a full second's worth out at once
                    # after a quiet spell; this per-worker limiter spaces sends evenly.
                    max_activities_per_second=rate,
                )
            )
    return workers, executor
