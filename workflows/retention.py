"""Daily retention: delete finished notifications' rows older than ``HERALD_RETENTION``.

A Temporal Schedule (``herald/retention``) starts ``RetentionWorkflow`` once a day; a
worker serving the workflows queue creates it at start, or updates it when the retention
settings changed. Each batch is one activity and one transaction (store/retention.py says
what goes and what stays), and the run continues as new every ``batches_per_run``
batches, so a first run over years of rows keeps a short history.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from temporalio.client import (
        Client,
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleCalendarSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleRange,
        ScheduleSpec,
        ScheduleUpdate,
        ScheduleUpdateInput,
    )
    from temporalio.service import RPCError, RPCStatusCode

    from activities.policies import RETENTION_RETRY, RETENTION_TIMEOUT
    from activities.retention import (
        PurgeInput,
        RetentionActivities,
        RetentionInput,
        RetentionResult,
    )
    from core.settings import Settings
    from store.retention import PHASES

SCHEDULE_ID = "herald/retention"
# Temporal appends each run's scheduled time to it.
RUN_WORKFLOW_ID = "herald-retention"
MEMO_KEY = "herald_retention"
# Slack beyond the dead-letter retention before a failed notification counts as closed.
DEAD_LETTER_GRACE = timedelta(days=1)

log = logging.getLogger(__name__)


@workflow.defn(name="RetentionWorkflow")
class RetentionWorkflow:
    @workflow.run
    async def run(self, inp: RetentionInput) -> RetentionResult:
        as_of = inp.as_of or workflow.now()
        cutoff = as_of - inp.retention
        failed_before = as_of - inp.dead_letter_retention - DEAD_LETTER_GRACE
        state = inp.model_copy(update={"as_of": as_of, "deleted": dict(inp.deleted)})
        in_this_run = 0
        for phase in PHASES[PHASES.index(inp.phase) :]:
            while True:
                if in_this_run >= inp.batches_per_run:
                    workflow.continue_as_new(state.model_copy(update={"phase": phase}))
                done = await workflow.execute_activity_method(
                    RetentionActivities.purge_batch,
                    PurgeInput(
                        phase=phase,
                        before=cutoff,
                        failed_before=failed_before,
                        limit=inp.batch_size,
                    ),
                    start_to_close_timeout=RETENTION_TIMEOUT,
                    retry_policy=RETENTION_RETRY,
                    summary=f"{phase.value} older than {cutoff:%Y-%m-%d %H:%M} UTC",
                )
                in_this_run += 1
                state.batches += 1
                for name, n in done.deleted.items():
                    state.deleted[name] = state.deleted.get(name, 0) + n
                workflow.set_current_details(
                    f"{state.batches} batch(es), deleted {_summary(state.deleted)}"
                )
                if done.selected < inp.batch_size:
                    break
        return RetentionResult(cutoff=cutoff, batches=state.batches, deleted=state.deleted)


def _summary(deleted: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(deleted.items())) or "nothing"


# --- the schedule (client side, never run inside a workflow) ----------------------------


def retention_input(settings: Settings) -> RetentionInput:
    return RetentionInput(
        retention=settings.retention,
        batch_size=settings.retention_batch_size,
        dead_letter_retention=settings.dead_letter_retention,
    )


def fingerprint(settings: Settings) -> dict[str, Any]:
    """What the schedule is built from; a worker started with other values replaces it."""
    return {
        "at": settings.retention_at,
        "task_queue": settings.workflow_task_queue,
        **retention_input(settings).model_dump(
            mode="json", include={"retention", "batch_size", "dead_letter_retention"}
        ),
    }


def retention_schedule(settings: Settings) -> Schedule:
    hour, minute = (int(part) for part in settings.retention_at.split(":"))
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RetentionWorkflow.run,
            retention_input(settings),
            id=RUN_WORKFLOW_ID,
            task_queue=settings.workflow_task_queue,
            # A run still going after a day (a huge first backlog) ends; the next resumes.
            execution_timeout=timedelta(hours=23),
            memo={MEMO_KEY: fingerprint(settings)},
            static_summary=f"delete finished notifications older than {settings.retention}",
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    hour=[ScheduleRange(hour)],
                    minute=[ScheduleRange(minute)],
                    comment=f"daily at {settings.retention_at} UTC",
                )
            ],
            time_zone_name="UTC",
        ),
        # One run at a time; a run missed during an outage is caught up within the hour.
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(hours=1)
        ),
    )


Outcome = Literal["created", "updated", "unchanged", "skipped", "failed"]


async def ensure_retention_schedule(
    client: Client, settings: Settings, queues: Iterable[str]
) -> Outcome:
    """Create ``herald/retention`` if missing, replace it if its settings changed.

    Only a worker that serves the workflows queue owns it. An operator's pause is kept.
    A Temporal refusal is logged, not raised: the worker still serves its queues.
    """
    from workflows.runtime import WORKFLOWS_QUEUE  # runtime imports this module

    if WORKFLOWS_QUEUE not in queues:
        return "skipped"
    wanted = retention_schedule(settings)
    try:
        try:
            await client.create_schedule(SCHEDULE_ID, wanted)
            log.info("created schedule %s (daily at %s UTC)", SCHEDULE_ID, settings.retention_at)
            return "created"
        except ScheduleAlreadyRunningError:
            pass
        handle = client.get_schedule_handle(SCHEDULE_ID)
        desc = await handle.describe()
        if await _memo(client, desc.schedule) == fingerprint(settings):
            return "unchanged"

        def keep_state(current: ScheduleUpdateInput) -> ScheduleUpdate:
            wanted.state = current.description.schedule.state
            return ScheduleUpdate(schedule=wanted)

        await handle.update(keep_state)
        log.info("updated schedule %s to %s", SCHEDULE_ID, fingerprint(settings))
        return "updated"
    except RPCError as exc:
        level = logging.WARNING if exc.status == RPCStatusCode.UNIMPLEMENTED else logging.ERROR
        log.log(level, "could not create schedule %s: %s", SCHEDULE_ID, exc)
        return "failed"


async def _memo(client: Client, schedule: Schedule) -> Any:
    action = schedule.action
    if not isinstance(action, ScheduleActionStartWorkflow) or not action.memo:
        return None
    raw = action.memo.get(MEMO_KEY)
    if raw is None or isinstance(raw, dict):
        return raw
    return (await client.data_converter.decode([raw]))[0]
