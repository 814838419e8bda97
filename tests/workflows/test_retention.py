"""RetentionWorkflow on the time-skipping server, and its schedule on the dev server.

Rows are dated in 2001 (see tests/store/test_retention.py), and the retention passed is
"Temporal's now minus 2001-02-01", so a run deletes nothing else in the shared database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import col
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleDescription,
    ScheduleOverlapPolicy,
    ScheduleRange,
    WorkflowHandle,
)
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.retention import RetentionInput, RetentionResult
from store.db import read_scope, session_scope
from store.engagement import TrackedLink
from store.models import Delivery, DeliveryEvent, Event, Notification, SandboxMessage
from store.retention import Cutoff
from tests.conftest import Herald, make_settings, start_herald, store_undispatched, unique
from tests.histories import HERE, RECORD_ENV, keep_history
from tests.store.test_retention import (
    BEFORE,
    GONE,
    OLD,
    YOUNG,
    Seeded,
    drain,
    present,
    rollups,
    seed,
)
from workflows.retention import MEMO_KEY, SCHEDULE_ID, ensure_retention_schedule, fingerprint
from workflows.runtime import ALL_QUEUES, WORKFLOWS_QUEUE

REPO = Path(__file__).resolve().parents[2]
CONTINUED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW


@pytest.fixture
async def herald(
    skipping_env: WorkflowEnvironment, engine: Engine, database_url: str
) -> AsyncIterator[Herald]:
    """Herald on the time-skipping server with no provider: email goes to the sandbox."""
    async with AsyncExitStack() as stack:
        yield await start_herald(stack, skipping_env, engine, database_url)


async def run_retention(
    env: WorkflowEnvironment, herald: Herald, retention: timedelta | None = None, **fields: Any
) -> tuple[WorkflowHandle[Any, RetentionResult], RetentionResult]:
    """One run; by default its cutoff is 2001-02-01 by the server's clock."""
    if retention is None:
        retention = await env.get_current_time() - BEFORE
    # Only the test moves the clock: waiting for the result would let the server skip
    # ahead to the next timer anywhere on it (an activity's timeout), and move the cutoff.
    with env.auto_time_skipping_disabled():
        handle = await env.client.start_workflow(
            "RetentionWorkflow",
            RetentionInput(retention=retention, **fields),
            id=unique("retention"),
            task_queue=herald.settings.workflow_task_queue,
            result_type=RetentionResult,
        )
        return handle, await handle.result()


def backdate(engine: Engine, event_id: str, at: datetime) -> None:
    """Make an event and everything under it look ``at`` old."""
    with session_scope(engine) as s:
        s.execute(update(Event).where(col(Event.id) == event_id).values(received_at=at))
        nids = (
            s.execute(
                update(Notification)
                .where(col(Notification.event_id) == event_id)
                .values(created_at=at)
                .returning(col(Notification.id))
            )
            .scalars()
            .all()
        )
        dids = (
            s.execute(
                update(Delivery)
                .where(col(Delivery.notification_id).in_(nids))
                .values(created_at=at, updated_at=at)
                .returning(col(Delivery.id))
            )
            .scalars()
            .all()
        )
        for model in (DeliveryEvent, TrackedLink, SandboxMessage):
            s.execute(update(model).where(col(model.delivery_id).in_(dids)).values(created_at=at))


def as_seeded(engine: Engine, event_id: str) -> Seeded:
    """The rows a real event left, in the shape ``present`` counts."""
    with read_scope(engine) as s:
        nid = s.execute(
            select(col(Notification.id)).where(col(Notification.event_id) == event_id)
        ).scalar_one()
        dids = s.execute(
            select(col(Delivery.id)).where(col(Delivery.notification_id) == nid)
        ).scalars()
        return Seeded("", event_id, nid, {Delivery: list(dids)})


async def test_a_run_deletes_old_rows_of_finished_notifications_only(
    skipping_env: WorkflowEnvironment, herald: Herald, engine: Engine
) -> None:
    drain(engine)
    await herald.put_subscriber("ada", email="ada@example.com")
    await herald.put_flow(
        "receipt",
        event_type="order.paid",
        steps=[
            {
                "channel": "email",
                "subject": "Paid",
                "text": "Thanks",
                "html": '<p><a href="https://shop.example/orders/1">your order</a></p>',
            }
        ],
    )
    old_id = (await herald.publish(type="order.paid", to=["ada"]))["id"]
    young_id = (await herald.publish(type="order.paid", to=["ada"]))["id"]
    for event_id in (old_id, young_id):
        body = await herald.wait_event(event_id)
        assert body["notifications"][0]["status"] == "sent"
    # Stored, its workflow not started yet: a notification still open.
    open_id = store_undispatched(herald, "order.paid", "ada").event.id
    backdate(engine, old_id, OLD)
    backdate(engine, open_id, OLD)
    backdate(engine, young_id, YOUNG)
    old, young, still_open = (as_seeded(engine, e) for e in (old_id, young_id, open_id))
    old_rows = present(engine, old)
    # The real send left every kind of row: history, a tracked link, a sandbox message.
    assert all(old_rows.get(t) for t in ("delivery_events", "tracked_links", "sandbox_messages"))
    kept = {s.event_id: present(engine, s) for s in (young, still_open)}
    rollups_before = rollups(engine, herald.tenant)

    handle, result = await run_retention(skipping_env, herald)

    assert present(engine, old) == GONE
    for s in (young, still_open):
        assert present(engine, s) == kept[s.event_id]
        assert kept[s.event_id]["notifications"] == 1
    assert rollups(engine, herald.tenant) == rollups_before != []
    assert result.deleted == {t: n for t, n in old_rows.items() if n}
    assert abs(result.cutoff - BEFORE) < timedelta(minutes=5)
    await keep_history(herald.client, handle.id, "retention-daily")


async def test_batches_are_bounded_and_a_long_run_continues_as_new(
    skipping_env: WorkflowEnvironment, herald: Herald, engine: Engine
) -> None:
    drain(engine)
    seeded = [seed(engine, herald.tenant, at=OLD) for _ in range(5)]

    handle, result = await run_retention(skipping_env, herald, batch_size=2, batches_per_run=3)

    assert all(present(engine, s) == GONE for s in seeded)
    assert result.deleted == {
        "notifications": 5,
        "deliveries": 5,
        "delivery_events": 5,
        "tracked_links": 5,
        "events": 5,
        "sandbox_messages": 5,
    }
    # Batches of 2, 2 and 1 for notifications, events and sandbox messages, then one that
    # finds no orphaned link: ten batches, at most three per run, so four runs.
    assert result.batches == 10
    run_id = handle.first_execution_run_id
    runs = 0
    while run_id:
        history = await herald.client.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
        runs += 1
        if runs == 1 and os.environ.get(RECORD_ENV):  # a run that ends continuing as new
            folder = HERE / os.environ[RECORD_ENV]
            folder.mkdir(exist_ok=True)
            (folder / "retention-continued.json").write_text(history.to_json())
        last = history.events[-1]
        continued = last.workflow_execution_continued_as_new_event_attributes
        run_id = continued.new_execution_run_id if last.event_type == CONTINUED else None
    assert runs == 4
    await keep_history(herald.client, handle.id, "retention-batches")


async def test_the_cutoff_follows_temporals_clock(
    skipping_env: WorkflowEnvironment, herald: Herald, engine: Engine
) -> None:
    drain(engine)
    day_after_cutoff = seed(engine, herald.tenant, at=BEFORE + timedelta(days=1))
    retention = await skipping_env.get_current_time() - BEFORE

    _, first = await run_retention(skipping_env, herald, retention)
    await skipping_env.sleep(timedelta(days=2))
    # The same retention two (skipped) days later: the row has aged past it.
    _, later = await run_retention(skipping_env, herald, retention)

    assert first.deleted == {}
    assert timedelta(days=2) <= later.cutoff - first.cutoff < timedelta(days=2, minutes=1)
    assert later.deleted["notifications"] == 1
    assert present(engine, day_after_cutoff) == GONE


# --- the schedule, on the dev server (the time-skipping server has no schedules) ---------


@pytest.fixture
async def no_schedule(temporal_env: WorkflowEnvironment) -> AsyncIterator[Client]:
    """``herald/retention`` is one per namespace: absent before the test and after it."""
    client = temporal_env.client
    with contextlib.suppress(RPCError):
        await client.get_schedule_handle(SCHEDULE_ID).delete()
    yield client
    with contextlib.suppress(RPCError):
        await client.get_schedule_handle(SCHEDULE_ID).delete()


async def memo(client: Client, desc: ScheduleDescription) -> Any:
    action = desc.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.memo is not None
    return (await client.data_converter.decode([action.memo[MEMO_KEY]]))[0]


async def test_the_worker_creates_the_schedule_at_start_and_it_runs_retention(
    no_schedule: Client, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    client = no_schedule
    ten_years = datetime.now(UTC) - timedelta(days=3650)
    drain(engine, Cutoff(before=ten_years, failed_before=ten_years))
    old = seed(engine, unique("tenant"), at=OLD)
    prefix = unique("tq")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {
        "HERALD_ENV": "test",
        "HERALD_DATABASE_URL": database_url,
        "HERALD_TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "HERALD_TASK_QUEUE_PREFIX": prefix,
        # Ten years: the run it makes touches only the 2001 rows these tests own.
        "HERALD_RETENTION": "P3650D",
        "HERALD_RETENTION_AT": "04:05",
        "HERALD_DISPATCH_SWEEP_SECONDS": "0",
    }
    log_path = tmp_path / "worker.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "worker.py",
        "--queues",
        WORKFLOWS_QUEUE,
        cwd=REPO,
        env=env,
        stdout=log_path.open("wb"),
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(600):
            if "serving workflows" in log_path.read_text() or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert "created schedule herald/retention" in log_path.read_text(), log_path.read_text()
        handle = client.get_schedule_handle(SCHEDULE_ID)
        desc = await handle.describe()
        (calendar,) = desc.schedule.spec.calendars
        assert (calendar.hour, calendar.minute) == ((ScheduleRange(4),), (ScheduleRange(5),))
        assert desc.schedule.spec.time_zone_name == "UTC"
        assert desc.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
        assert desc.schedule.policy.catchup_window == timedelta(hours=1)
        action = desc.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.task_queue) == ("RetentionWorkflow", f"{prefix}-workflows")
        wanted = RetentionInput.model_validate(await memo(client, desc))
        assert wanted.retention == timedelta(days=3650)
        assert all(t.hour == 4 and t.minute == 5 for t in desc.info.next_action_times)

        # Run it now: the worker that created it serves the run.
        await handle.trigger()
        for _ in range(300):
            desc = await handle.describe()
            if desc.info.recent_actions:
                break
            await asyncio.sleep(0.1)
        started = desc.info.recent_actions[0].action
        assert isinstance(started, ScheduleActionExecutionStartWorkflow)
        result = await asyncio.wait_for(
            client.get_workflow_handle(started.workflow_id, result_type=RetentionResult).result(),
            30,
        )
        assert datetime.now(UTC) - timedelta(days=3650) - result.cutoff < timedelta(minutes=5)
        assert result.deleted["notifications"] == 1
        assert present(engine, old) == GONE
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, log_path.read_text()


async def test_creating_the_schedule_again_is_a_no_op_and_new_settings_replace_it(
    no_schedule: Client, database_url: str
) -> None:
    client = no_schedule
    settings, _, _ = make_settings(database_url)
    handle = client.get_schedule_handle(SCHEDULE_ID)

    assert await ensure_retention_schedule(client, settings, [WORKFLOWS_QUEUE]) == "created"
    first = await handle.describe()
    assert await ensure_retention_schedule(client, settings, [WORKFLOWS_QUEUE]) == "unchanged"
    again = await handle.describe()
    assert again.info.last_updated_at == first.info.last_updated_at
    assert again.info.created_at == first.info.created_at
    assert await memo(client, again) == fingerprint(settings)

    # An operator paused it; a worker started with a shorter retention replaces the
    # schedule's input and keeps the pause.
    await handle.pause(note="paused by support")
    shorter = settings.model_copy(update={"retention": timedelta(days=30)})
    assert await ensure_retention_schedule(client, shorter, ALL_QUEUES) == "updated"
    updated = await handle.describe()
    assert (await memo(client, updated))["retention"] == "P30D"
    assert updated.schedule.state.paused
    assert updated.info.created_at == first.info.created_at
    assert await ensure_retention_schedule(client, shorter, ALL_QUEUES) == "unchanged"

    # A worker that serves only channel queues leaves it alone.
    await handle.delete()
    assert await ensure_retention_schedule(client, settings, ["email", "sms"]) == "skipped"
    with pytest.raises(RPCError):
        await handle.describe()
