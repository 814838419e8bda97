from __future__ import annotations

import pytest

from core.preferences import decide
from core.types import Channel


def allowed(prefs: dict | None, channel: str = "email", critical: bool = False) -> bool:
    return (
        decide(
            prefs,
            channel=Channel(channel),
            flow_key="weekly",
            category="marketing",
            critical=critical,
        )
        is None
    )


def test_unset_is_allowed() -> None:
    assert allowed(None)
    assert allowed({})
    assert allowed({"flows": {"other": False}, "categories": {"other": False}})


@pytest.mark.parametrize(
    ("prefs", "channel", "expected"),
    [
        ({"channels": {"email": False}}, "email", False),
        ({"channels": {"email": False}}, "sms", True),
        # category beats channel
        ({"channels": {"email": False}, "categories": {"marketing": True}}, "email", True),
        ({"channels": {"email": True}, "categories": {"marketing": False}}, "email", False),
        # per-channel category switch; an unset channel in it falls through
        ({"categories": {"marketing": {"sms": False}}}, "sms", False),
        (
            {"categories": {"marketing": {"sms": False}}, "channels": {"email": False}},
            "email",
            False,
        ),
        # flow beats category
        ({"categories": {"marketing": False}, "flows": {"weekly": True}}, "email", True),
        (
            {"categories": {"marketing": True}, "flows": {"weekly": {"email": False}}},
            "email",
            False,
        ),
        ({"categories": {"marketing": False}, "flows": {"weekly": {"sms": True}}}, "email", False),
    ],
)
def test_most_specific_setting_wins(prefs: dict, channel: str, expected: bool) -> None:
    assert allowed(prefs, channel) is expected


def test_critical_ignores_every_opt_out() -> None:
    prefs = {
        "channels": {"sms": False},
        "categories": {"marketing": False},
        "flows": {"weekly": False},
    }
    assert allowed(prefs, "sms", critical=True)


def test_reason_names_the_deciding_scope() -> None:
    reason = decide(
        {"categories": {"marketing": False}},
        channel=Channel.PUSH,
        flow_key="weekly",
        category="marketing",
        critical=False,
    )
    assert reason == "opted out of push by category 'marketing' preference"
