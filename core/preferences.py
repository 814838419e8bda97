"""Preference resolution: flow beats category beats channel, unset means allowed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from core.types import Channel

ChannelSwitch = bool | dict[Channel, bool]


class PreferenceSet(BaseModel):
    channels: dict[Channel, bool] = Field(default_factory=dict)
    categories: dict[str, ChannelSwitch] = Field(default_factory=dict)
    flows: dict[str, ChannelSwitch] = Field(default_factory=dict)


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
