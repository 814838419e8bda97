"""Scheduled and recurring broadcasts as real Temporal Schedules.

Temporal holds the schedule; Herald stores nothing. Each schedule's action starts a
``BroadcastWorkflow`` with the request's broadcast body, and the workflow opens its own
broadcast row per run. The request itself travels in the action's memo (which every run
also carries), so ``GET`` answers what was asked, not Temporal's compiled calendars.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecution,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleCalendarSpec,
    ScheduleDescription,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from api.bodies import ScheduledBroadcastIn
from core.flows import FLOW_KEY_PATTERN
from core.preferences import iana_timezone, timezone_enum
from core.retry import MAX_SECONDS, Duration
from core.settings import Settings
from store.models import IsoDateTime
from workflows.broadcast import BroadcastWorkflow
from workflows.notification import SA_TENANT
from workflows.types import BroadcastInput, NotificationInput

SCHEDULE_KEY_PATTERN = FLOW_KEY_PATTERN
MEMO_KEY = "herald_schedule"
MIN_INTERVAL = timedelta(minutes=1)
# A date part with years or months (P1M, P1Y2M, P1Y): not a fixed length of time.
_CALENDAR_DURATION = re.compile(r"^P[^T]*[YM]", re.IGNORECASE)


def schedule_id(tenant: str, key: str) -> str:
    return f"herald/{tenant}/{key}"


def run_workflow_id(tenant: str, key: str) -> str:
    """Temporal appends each run's scheduled time, so runs never share an id."""
    return f"broadcast/{tenant}/schedule/{key}"


def _exact_duration(value: Any) -> Any:
    if isinstance(value, str) and _CALENDAR_DURATION.match(value.strip()):
        raise ValueError(
            "months and years are not exact durations: use PTnH, PnD or PnW, "
            "or a cron such as '0 9 1 * *' for the first of every month"
        )
    return value


def _at_least_a_minute(value: timedelta) -> timedelta:
    if value < MIN_INTERVAL:
        raise PydanticCustomError("interval_too_short", "must be at least one minute (PT1M)")
    return value


# The document's account of an interval: a duration with no years or months, or seconds.
INTERVAL_SCHEMA = {
    "anyOf": [
        {"type": "string", "format": "duration", "pattern": r"^[Pp][^TtYyMm]*([Tt][\s\S]*)?$"},
        {"type": "number", "minimum": MIN_INTERVAL.total_seconds(), "maximum": MAX_SECONDS},
    ]
}
Interval = Annotated[Duration, BeforeValidator(_exact_duration), WithJsonSchema(INTERVAL_SCHEMA)]
# Fields split on these; the cron validator below and this pattern say the same.
_SPACE = " \t\n\r"
_WS = r" \t\n\r"  # the same, as a regex class
CRON_PATTERN = (
    rf"^[{_WS}]*(?![Cc][Rr][Oo][Nn]_[Tt][Zz]=|[Tt][Zz]=)"
    rf"(@[\s\S]*|[^{_WS}]+([{_WS}]+[^{_WS}]+){{4,6}})[{_WS}]*$"
)
_SPACES = re.compile(f"[{_WS}]+")


def _exactly_one_spec(schema: dict[str, Any]) -> None:
    schema["oneOf"] = [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
        for name in ("cron", "interval", "at")
    ]


class ScheduleBody(BaseModel):
    """``PUT /v1/schedules/{key}``: exactly one of ``cron``, ``interval`` or ``at``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one_spec)

    cron: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        examples=["0 9 * * MON"],
        json_schema_extra={"pattern": CRON_PATTERN},
    )
    interval: Interval | None = Field(default=None, examples=["P7D"])
    at: IsoDateTime | None = Field(default=None, examples=["2030-01-06T09:00:00+01:00"])
    timezone: str = Field(
        default="UTC", max_length=64, examples=["Europe/Berlin"], json_schema_extra=timezone_enum
    )
    broadcast: ScheduledBroadcastIn
    paused: StrictBool | None = Field(
        default=None, description="Omitted on an edit: the schedule keeps its paused state"
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: timedelta | None) -> timedelta | None:
        return None if value is None else _at_least_a_minute(value)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = " ".join(_SPACES.split(value.strip(_SPACE)))
        if value.upper().startswith(("CRON_TZ=", "TZ=")):
            raise ValueError("give the time zone in `timezone`, not in the cron string")
        if not value.startswith("@") and len(value.split(" ")) not in (5, 6, 7):
            raise ValueError("expected 5 fields (minute hour day-of-month month day-of-week)")
        return value

    @field_validator("at")
    @classmethod
    def _future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise PydanticCustomError("in_past", "must be in the future")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return iana_timezone(value)

    def given(self) -> list[str]:
        return [name for name in ("cron", "interval", "at") if getattr(self, name) is not None]


class RecentRun(BaseModel):
    workflow_id: str
    scheduled_at: datetime
    started_at: datetime


class SchedulePublic(BaseModel):
    key: str
    id: str
    cron: str | None
    interval: str | None
    at: datetime | None
    timezone: str
    paused: bool
    note: str | None
    next_runs: list[datetime]
    recent_runs: list[RecentRun]
    running: list[str]
    broadcast: dict[str, Any]


def build(
    settings: Settings,
    tenant: str,
    key: str,
    body: ScheduleBody,
    template: NotificationInput,
    *,
    paused: bool,
    summary: str,
) -> Schedule:
    """The whole Temporal schedule for a request; an edit replaces it in place."""
    spec_json = body.broadcast.model_dump(mode="json", exclude_none=True)
    request = body.model_dump(mode="json", include={"cron", "interval", "at", "timezone"})
    action = ScheduleActionStartWorkflow(
        BroadcastWorkflow.run,
        BroadcastInput(
            tenant_id=tenant,
            broadcast_id="",
            spec=spec_json,
            template=template,
            batch_size=settings.broadcast_batch_size,
            batches_in_flight=settings.broadcast_batches_in_flight,
        ),
        id=run_workflow_id(tenant, key),
        task_queue=settings.workflow_task_queue,
        typed_search_attributes=TypedSearchAttributes([SearchAttributePair(SA_TENANT, tenant)]),
        memo={MEMO_KEY: {**request, "key": key, "broadcast": spec_json}},
        static_summary=summary,
    )
    return Schedule(
        action=action,
        spec=_spec(body),
        # A run missed during an outage is caught up within the hour, never days later.
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(hours=1)
        ),
        state=ScheduleState(
            paused=paused,
            note="paused via the Herald API" if paused else None,
            # `at`: one run, then the schedule stays (and shows that it ran) until deleted.
            limited_actions=body.at is not None,
            remaining_actions=1 if body.at is not None else 0,
        ),
    )


def _spec(body: ScheduleBody) -> ScheduleSpec:
    if body.cron is not None:
        return ScheduleSpec(cron_expressions=[body.cron], time_zone_name=body.timezone)
    if body.interval is not None:
        return ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=body.interval)], time_zone_name=body.timezone
        )
    assert body.at is not None
    # That exact second, in UTC: no daylight-saving fold can make it fire an hour early.
    at = body.at.astimezone(UTC)
    return ScheduleSpec(
        calendars=[
            ScheduleCalendarSpec(
                second=[ScheduleRange(at.second)],
                minute=[ScheduleRange(at.minute)],
                hour=[ScheduleRange(at.hour)],
                day_of_month=[ScheduleRange(at.day)],
                month=[ScheduleRange(at.month)],
                year=[ScheduleRange(at.year)],
                comment=f"once, at {body.at.isoformat()}",
            )
        ],
        time_zone_name="UTC",
    )


def tenant_attributes(tenant: str) -> TypedSearchAttributes:
    """On the schedule itself, so ``temporal schedule list --query`` can filter by tenant."""
    return TypedSearchAttributes([SearchAttributePair(SA_TENANT, tenant)])


async def public(client: Client, key: str, desc: ScheduleDescription) -> SchedulePublic:
    """What the schedule is now; the request shape comes back from the action's memo."""
    action = desc.schedule.action
    request: dict[str, Any] = {}
    if isinstance(action, ScheduleActionStartWorkflow) and action.memo and MEMO_KEY in action.memo:
        raw = action.memo[MEMO_KEY]
        decoded = await client.data_converter.decode([raw]) if not isinstance(raw, dict) else [raw]
        request = dict(decoded[0] or {})
    state = desc.schedule.state
    return SchedulePublic(
        key=key,
        id=desc.id,
        cron=request.get("cron"),
        interval=request.get("interval"),
        at=request.get("at"),
        timezone=request.get("timezone") or desc.schedule.spec.time_zone_name or "UTC",
        paused=state.paused,
        note=state.note or None,
        next_runs=list(desc.info.next_action_times),
        recent_runs=[
            RecentRun(workflow_id=wid, scheduled_at=r.scheduled_at, started_at=r.started_at)
            for r in desc.info.recent_actions
            if (wid := _workflow_id(r.action))
        ],
        running=[wid for r in desc.info.running_actions if (wid := _workflow_id(r))],
        broadcast=request.get("broadcast") or {},
    )


def _workflow_id(execution: ScheduleActionExecution) -> str:
    return (
        execution.workflow_id if isinstance(execution, ScheduleActionExecutionStartWorkflow) else ""
    )
