"""Locale variants, digest context, quiet hours and send windows: pure functions, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from activities.render import build_message, localized
from channels.base import EmailContent, SmsContent
from core.flows import EmailLocale, EmailStep, SmsLocale, SmsStep, WebhookStep
from core.preferences import QuietHours, next_local, quiet_until
from store.models import Event, Subscriber

BERLIN = ZoneInfo("Europe/Berlin")


def _event(n: int = 1, **data: object) -> Event:
    return Event(
        id=f"evt_{n}",
        tenant_id="t",
        type="comment.created",
        data={"name": "Ada", **data},
        recipients=["u"],
        fingerprint="x",
        received_at=datetime(2024, 1, 15, 12, n, tzinfo=UTC),
    )


def _subscriber(locale: str = "en") -> Subscriber:
    return Subscriber(
        tenant_id="t", id="u", email="u@example.com", phone="+14155550100", locale=locale
    )


EMAIL = EmailStep(
    subject="Hello",
    text="Hello {{ data.name }}",
    html="<p>Hello</p>",
    locales={
        "de": EmailLocale(subject="Hallo", text="Hallo {{ data.name }}"),
        "fr": EmailLocale(subject="Bonjour", text="Bonjour {{ data.name }}"),
    },
)


# --- localized ----------------------------------------------------------------------


def test_region_falls_back_to_its_language() -> None:
    step = localized(EMAIL, "de-AT", "en")
    assert isinstance(step, EmailStep)
    assert (step.subject, step.text) == ("Hallo", "Hallo {{ data.name }}")
    # Translated text is never paired with the base step's (English) HTML.
    assert step.html is None
    # The original is not changed.
    assert EMAIL.subject == "Hello"


def test_fields_a_variant_leaves_out_keep_the_base_value() -> None:
    step = localized(
        EMAIL.model_copy(update={"locales": {"de": EmailLocale(subject="Hallo")}}), "de", "en"
    )
    assert isinstance(step, EmailStep)
    assert (step.subject, step.text, step.html) == ("Hallo", EMAIL.text, EMAIL.html)


def test_exact_region_beats_its_language_and_case_and_underscore_do_not_matter() -> None:
    step = SmsStep(
        text="Hi", locales={"de": SmsLocale(text="Hallo"), "de-AT": SmsLocale(text="Servus")}
    )
    austrian, german = localized(step, "de_at", "en"), localized(step, "de-DE", "en")
    assert isinstance(austrian, SmsStep) and isinstance(german, SmsStep)
    assert (austrian.text, german.text) == ("Servus", "Hallo")


def test_unknown_locale_uses_the_flow_default_locale() -> None:
    step = localized(EMAIL, "ja-JP", "fr")
    assert isinstance(step, EmailStep)
    assert step.subject == "Bonjour"


def test_default_locale_region_falls_back_to_its_language() -> None:
    step = localized(EMAIL, "ja", "fr-CA")
    assert isinstance(step, EmailStep)
    assert step.subject == "Bonjour"


def test_no_matching_variant_keeps_the_base_step() -> None:
    step = localized(EMAIL, "ja-JP", "en")
    assert isinstance(step, EmailStep)
    assert (step.subject, step.text) == ("Hello", "Hello {{ data.name }}")


def test_steps_without_locales_are_returned_as_is() -> None:
    hook = WebhookStep(url="https://example.com/h")
    assert localized(hook, "de", "en") is hook


# --- build_message ---------------------------------------------------------------------


def test_build_message_renders_the_subscribers_language() -> None:
    msg = build_message(EMAIL, delivery_id="d", event=_event(), subscriber=_subscriber("de-AT"))
    assert isinstance(msg.content, EmailContent)
    assert (msg.content.subject, msg.content.text) == ("Hallo", "Hallo Ada")
    assert msg.to == ("u@example.com",)


def test_build_message_falls_back_to_the_flow_default_then_the_base() -> None:
    sub = _subscriber("ja")
    msg = build_message(EMAIL, delivery_id="d", event=_event(), subscriber=sub, default_locale="fr")
    assert isinstance(msg.content, EmailContent)
    assert msg.content.text == "Bonjour Ada"
    base = build_message(EMAIL, delivery_id="d", event=_event(), subscriber=sub)
    assert isinstance(base.content, EmailContent)
    assert (base.content.subject, base.content.text) == ("Hello", "Hello Ada")


def test_build_message_digest_context() -> None:
    step = SmsStep(
        text="{{ digest.count }} new:{% for e in digest.events %} {{ e.data.name }}"
        "@{{ e.id }}{% endfor %}",
        locales={"de": SmsLocale(text="{{ digest.count }} neue")},
    )
    events = [_event(1, name="Ada"), _event(2, name="Bob"), _event(3, name="Cy")]
    msg = build_message(
        step, delivery_id="d", event=events[-1], subscriber=_subscriber(), digest=events
    )
    assert isinstance(msg.content, SmsContent)
    assert msg.content.text == "3 new: Ada@evt_1 Bob@evt_2 Cy@evt_3"
    german = build_message(
        step, delivery_id="d", event=events[-1], subscriber=_subscriber("de"), digest=events
    )
    assert isinstance(german.content, SmsContent)
    assert german.content.text == "3 neue"


def test_without_a_digest_the_template_sees_no_digest() -> None:
    step = SmsStep(text="{{ digest is defined }}")
    msg = build_message(step, delivery_id="d", event=_event(), subscriber=_subscriber())
    assert isinstance(msg.content, SmsContent)
    assert msg.content.text == "False"


# --- quiet hours -------------------------------------------------------------------------

NIGHT = QuietHours(start="22:00", end="07:00")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # 06:30 in Berlin (winter, UTC+1): inside the window that began yesterday.
        (datetime(2024, 1, 15, 5, 30, tzinfo=UTC), datetime(2024, 1, 15, 7, 0, tzinfo=BERLIN)),
        # 23:30 in Berlin: inside the window that began today, ends tomorrow.
        (datetime(2024, 1, 15, 22, 30, tzinfo=UTC), datetime(2024, 1, 16, 7, 0, tzinfo=BERLIN)),
        # Exactly 22:00 in Berlin: the start is inside.
        (datetime(2024, 1, 15, 21, 0, tzinfo=UTC), datetime(2024, 1, 16, 7, 0, tzinfo=BERLIN)),
        # 06:30 in Berlin in summer (UTC+2).
        (datetime(2024, 7, 1, 4, 30, tzinfo=UTC), datetime(2024, 7, 1, 7, 0, tzinfo=BERLIN)),
    ],
)
def test_quiet_until_spanning_midnight(now: datetime, expected: datetime) -> None:
    until = quiet_until(NIGHT, now, "Europe/Berlin")
    assert until is not None
    assert until == expected
    assert until.utcoffset() == expected.utcoffset()
    assert until > now


def test_quiet_until_outside_the_window_is_none() -> None:
    # 12:00 and exactly 07:00 (the end is outside) in Berlin.
    assert quiet_until(NIGHT, datetime(2024, 1, 15, 11, 0, tzinfo=UTC), "Europe/Berlin") is None
    assert quiet_until(NIGHT, datetime(2024, 1, 15, 6, 0, tzinfo=UTC), "Europe/Berlin") is None
    # 21:59 in Berlin.
    assert quiet_until(NIGHT, datetime(2024, 1, 15, 20, 59, tzinfo=UTC), "Europe/Berlin") is None


def test_quiet_until_same_day_window_and_dict_form() -> None:
    quiet = {"start": "09:00", "end": "17:00"}
    now = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)  # 11:00 in Berlin
    assert quiet_until(quiet, now, "Europe/Berlin") == datetime(2024, 1, 15, 17, 0, tzinfo=BERLIN)
    assert quiet_until(quiet, now, "UTC") == datetime(2024, 1, 15, 17, 0, tzinfo=UTC)
    assert quiet_until(quiet, now + timedelta(hours=8), "Europe/Berlin") is None


def test_quiet_until_empty_window_or_no_quiet_hours_is_none() -> None:
    now = datetime(2024, 1, 15, 22, 0, tzinfo=UTC)
    assert quiet_until(QuietHours(start="22:00", end="22:00"), now, "UTC") is None
    assert quiet_until(None, now, "UTC") is None


def test_quiet_hours_refuse_bad_times() -> None:
    with pytest.raises(ValueError):
        QuietHours(start="24:00", end="07:00")
    with pytest.raises(ValueError):
        QuietHours(start="7:00", end="08:00")


# --- send windows --------------------------------------------------------------------------


def test_next_local_later_today() -> None:
    now = datetime(2024, 1, 15, 7, 0, tzinfo=UTC)  # 08:00 in Berlin
    at = next_local("09:00", now, "Europe/Berlin")
    assert at == datetime(2024, 1, 15, 9, 0, tzinfo=BERLIN)
    assert at.astimezone(UTC) == datetime(2024, 1, 15, 8, 0, tzinfo=UTC)


def test_next_local_is_strictly_after_now() -> None:
    exactly = datetime(2024, 1, 15, 8, 0, tzinfo=UTC)  # 09:00 in Berlin
    assert next_local("09:00", exactly, "Europe/Berlin") == datetime(
        2024, 1, 16, 9, 0, tzinfo=BERLIN
    )
    later = datetime(2024, 1, 15, 20, 0, tzinfo=UTC)  # 21:00 in Berlin
    assert next_local("09:00", later, "Europe/Berlin") == datetime(2024, 1, 16, 9, 0, tzinfo=BERLIN)


def test_next_local_across_a_dst_change() -> None:
    # 2024-03-31: Berlin moves from UTC+1 to UTC+2 at 02:00 local.
    now = datetime(2024, 3, 30, 20, 0, tzinfo=UTC)  # 21:00 CET
    at = next_local("09:00", now, "Europe/Berlin")
    assert at.astimezone(UTC) == datetime(2024, 3, 31, 7, 0, tzinfo=UTC)  # 09:00 CEST
