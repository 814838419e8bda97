"""Log lines written by an activity carry the ids it works on (JSON logs make them fields)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from core.telemetry import LOG_ID_FIELDS, log_ids


def ids_of(workflow_id: str | None, args: Sequence[Any]) -> dict[str, str]:
    """Ids from the calling workflow's id (``kind/tenant/…``) and the activity's input."""
    ids: dict[str, str] = {}
    parts = (workflow_id or "").split("/")
    if len(parts) >= 3:
        ids["tenant_id"] = parts[1]
        if parts[0] == "notification":
            ids["event_id"] = parts[2]
        elif parts[0] == "broadcast":
            ids["broadcast_id"] = parts[2]
    for arg in args:
        for field in LOG_ID_FIELDS:
            value = getattr(arg, field, None)
            if isinstance(value, str):
                ids[field] = value
    return ids


class LogContextInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _WithIds(next)


class _WithIds(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        # Set before a sync activity's thread starts: the SDK copies this context into it.
        with log_ids(**ids_of(activity.info().workflow_id, input.args)):
            return await super().execute_activity(input)
