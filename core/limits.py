"""Size and work limits on what tenants send, so one request cannot exhaust a process.

Every limit is a setting (``HERALD_MAX_*``). Pydantic validators cannot take arguments,
so the request models read the limits of the running process through ``limits()``:
``create_app`` installs its settings with ``configure``; elsewhere (the worker, the
consumer) they are ``get_settings()``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from pydantic_core import PydanticCustomError, to_json

if TYPE_CHECKING:
    from collections.abc import Mapping

MB = 1024 * 1024
# What a workflow input carries besides the flow: ids, queues, retry policies, providers.
WORKFLOW_INPUT_OVERHEAD = 16 * 1024


class LimitSettings(BaseModel):
    """Mixed into ``Settings``: each field is ``HERALD_<NAME>``."""

    # Any request body (413). Counted as it streams, so a larger one is never buffered.
    max_request_bytes: int = Field(default=MB, ge=1024)
    # POST /v1/subscribers/bulk takes up to 10,000 rows at once.
    max_bulk_request_bytes: int = Field(default=16 * MB, ge=1024)
    # An event's or a subscriber's ``data``, as serialized JSON.
    max_data_bytes: int = Field(default=64 * 1024, ge=2)
    # Recipients in one event's ``to``.
    max_recipients: int = Field(default=1000, ge=1)
    # One template (a subject, a text, an HTML body, a webhook payload string, a key).
    max_template_bytes: int = Field(default=64 * 1024, ge=16)
    # Steps in one flow.
    max_flow_steps: int = Field(default=20, ge=1)
    # Push tokens one subscriber keeps.
    max_push_tokens: int = Field(default=20, ge=1)
    # Stored events one replay request goes through (its ``limit``).
    max_replay_events: int = Field(default=10_000, ge=1)
    # What one template may produce, and the largest value it may build on the way.
    max_render_bytes: int = Field(default=MB, ge=1024)
    # Loop iterations, calls and filters one rendering may take.
    max_render_steps: int = Field(default=200_000, ge=100)
    # Wall-clock budget of one rendering, checked at each of those steps.
    max_render_seconds: float = Field(default=2.0, gt=0)
    # A notification's workflow input (its flow snapshot, mostly); Temporal refuses 2 MB.
    max_workflow_input_bytes: int = Field(default=1_500_000, ge=64 * 1024)
    # Failed hand-overs of one event to Temporal (not outages) before the outbox gives up.
    dispatch_max_attempts: int = Field(default=10, ge=1)


_active: LimitSettings | None = None


def configure(settings: LimitSettings | None) -> None:
    """Make ``settings`` the limits of this process (None: back to ``get_settings()``)."""
    global _active
    _active = settings


def limits() -> LimitSettings:
    if _active is not None:
        return _active
    return _settings()()


@cache
def _settings() -> Callable[[], LimitSettings]:
    """``get_settings``, imported once: core.settings imports this module."""
    from core.settings import get_settings

    return get_settings


def env_name(field: str) -> str:
    return f"HERALD_{field.upper()}"


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (what the database and Temporal store)."""
    return len(to_json(value))


def _too_large(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def check_data(value: Mapping[str, Any]) -> Any:
    """A pydantic validator: ``data`` within HERALD_MAX_DATA_BYTES."""
    cap = limits().max_data_bytes
    size = json_size(value)
    if size > cap:
        raise _too_large(
            "data_too_large",
            f"is {size:,} bytes as JSON, over the {cap:,}-byte limit "
            f"({env_name('max_data_bytes')})",
        )
    return value


def count_check(field: str, what: str) -> Callable[[Any], Any]:
    """A ``mode="before"`` validator: at most ``limits().<field>`` items, counted before
    the items are validated, so a huge list is refused without the work."""

    def check(value: Any) -> Any:
        cap: int = getattr(limits(), field)
        if isinstance(value, Sized) and not isinstance(value, str | bytes) and len(value) > cap:
            raise _too_large(
                "too_many",
                f"has {len(value):,} {what}, over the limit of {cap:,} ({env_name(field)})",
            )
        return value

    return check


def at_most(field: str) -> Callable[[int | None], int | None]:
    """An after validator: a number no larger than ``limits().<field>``."""

    def check(value: int | None) -> int | None:
        cap: int = getattr(limits(), field)
        if value is not None and value > cap:
            raise _too_large("too_large", f"is over the limit of {cap:,} ({env_name(field)})")
        return value

    return check


def max_items(field: str) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` that documents the configured limit as ``maxItems``."""

    def extra(schema: dict[str, Any]) -> None:
        schema["maxItems"] = getattr(limits(), field)

    return extra


def maximum(field: str) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` that documents the configured limit as ``maximum``."""

    def extra(schema: dict[str, Any]) -> None:
        schema["maximum"] = getattr(limits(), field)

    return extra


def template_problem(source: str) -> str | None:
    """Why ``source`` is too large to be a template, or None."""
    cap = limits().max_template_bytes
    size = len(source.encode())
    if size > cap:
        return (
            f"template is {size:,} bytes, over the {cap:,}-byte limit "
            f"({env_name('max_template_bytes')})"
        )
    return None


class WorkflowInputTooLargeError(ValueError):
    """A flow would make a workflow input Temporal refuses: refused at accept."""

    def __init__(self, flow_key: str, size: int, cap: int) -> None:
        super().__init__(
            f"flow {flow_key!r} makes a workflow input of about {size:,} bytes, over the "
            f"{cap:,}-byte limit ({env_name('max_workflow_input_bytes')}; Temporal refuses "
            "2 MB): make its templates smaller"
        )
        self.flow_key = flow_key


def workflow_input_size(flow: Mapping[str, Any]) -> int:
    """A notification's workflow input is its flow snapshot plus a bounded rest."""
    return json_size(flow) + WORKFLOW_INPUT_OVERHEAD + 64 * len(flow.get("steps") or ())


def check_workflow_input(flow_key: str, flow: Mapping[str, Any]) -> None:
    cap = limits().max_workflow_input_bytes
    size = workflow_input_size(flow)
    if size > cap:
        raise WorkflowInputTooLargeError(flow_key, size, cap)


def check_flow_size(flow: Mapping[str, Any]) -> None:
    """For a model validator: the same check, as a 422 on the flow's body."""
    try:
        check_workflow_input("this flow", flow)
    except WorkflowInputTooLargeError as exc:
        raise _too_large("workflow_input_too_large", str(exc)) from exc
