"""Preference resolution: flow beats category beats channel, unset means allowed."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from core.types import Channel

# Strict: the document says boolean, so 0, 1 and "true" are refused, not read as one.
ChannelSwitch = StrictBool | dict[Channel, StrictBool]


HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class QuietHours(BaseModel):
    """A daily window in the subscriber's timezone; ``start`` after ``end`` spans midnight."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(pattern=HHMM, examples=["22:00"])
    end: str = Field(pattern=HHMM, examples=["07:00"])


class PreferenceSet(BaseModel):
    channels: dict[Channel, StrictBool] = Field(default_factory=dict)
    categories: dict[str, ChannelSwitch] = Field(default_factory=dict)
    flows: dict[str, ChannelSwitch] = Field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    # Topic key -> False opts out of the topic's broadcasts.
    topics: dict[str, StrictBool] = Field(default_factory=dict)


@cache
def known_timezones() -> tuple[str, ...]:
    """The zones of the tz database: what a ``timezone`` field may name (the OpenAPI enum)."""
    return tuple(sorted(available_timezones()))


def timezone_enum(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` of a timezone field: the document lists the zones it takes."""
    schema["enum"] = list(known_timezones())


def iana_timezone(value: str) -> str:
    """A pydantic validator's check: the name must be a zone the tz database knows."""
    try:
        if value not in known_timezones():
            raise ZoneInfoNotFoundError(value)
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA timezone {value!r}, e.g. Europe/Berlin") from exc
    return value


def _at(day: datetime, hhmm: str) -> datetime:
    hour, minute = (int(x) for x in hhmm.split(":"))
    return day.replace(hour=hour, minute=minute, second=0, microsecond=0)


def quiet_until(
    quiet: QuietHours | dict[str, Any] | None, now: datetime, tz: str
) -> datetime | None:
    """When the quiet hours around ``now`` end (aware, in ``tz``), or None outside them."""
    if not quiet:
        return None
    q = quiet if isinstance(quiet, QuietHours) else QuietHours.model_validate(quiet)
    if q.start == q.end:
        return None
    local = now.astimezone(ZoneInfo(tz))
    # Check the window that started yesterday (it may span midnight) and the one today.
    for day in (local - timedelta(days=1), local):
        start = _at(day, q.start)
        end = _at(day if q.end > q.start else day + timedelta(days=1), q.end)
        if start <= local < end:
            return end
    return None


def next_local(hhmm: str, now: datetime, tz: str) -> datetime:
    """The next ``HH:MM`` in ``tz`` strictly after ``now`` (a send window)."""
    local = now.astimezone(ZoneInfo(tz))
    candidate = _at(local, hhmm)
    return candidate if candidate > local else _at(local + timedelta(days=1), hhmm)


def _lookup(switch: ChannelSwitch | None, channel: Channel) -> bool | None:
    if switch is None:
        return None
    if isinstance(switch, bool):
        return switch
    return switch.get(channel)


def decide(
    prefs: PreferenceSet | dict[str, Any] | None,
    *,
    channel: Channel,
    flow_key: str,
    category: str,
    critical: bool,
) -> str | None:
    """Return ``None`` if the send is allowed, else the reason it is skipped."""
    if critical or prefs is None:
        return None
    p = prefs if isinstance(prefs, PreferenceSet) else PreferenceSet.model_validate(prefs)
    for scope, value in (
        (f"flow '{flow_key}'", _lookup(p.flows.get(flow_key), channel)),
        (f"category '{category}'", _lookup(p.categories.get(category), channel)),
        ("channel", p.channels.get(channel)),
    ):
        if value is not None:
            return None if value else f"opted out of {channel.value} by {scope} preference"
    return None
