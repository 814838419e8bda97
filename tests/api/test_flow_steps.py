"""Control steps (delay, wait, digest) and their cross-step rules, as the API checks them."""

from __future__ import annotations

from typing import Any

from tests.conftest import Herald

SMS = {"channel": "sms", "text": "Hi {{ data.name }}"}
EMAIL = {"channel": "email", "subject": "Hello", "text": "Hello {{ data.name }}"}


async def _refused(herald: Herald, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PUT a flow that must be refused; nothing is stored. Returns the 422 detail."""
    r = await herald.http.put("/v1/flows/refused", json={"event_type": "x.y", "steps": steps})
    assert r.status_code == 422, r.text
    assert (await herald.http.get("/v1/flows/refused")).status_code == 404
    detail: list[dict[str, Any]] = r.json()["detail"]
    return detail


async def test_negative_delay_duration_names_the_step_and_field(herald: Herald) -> None:
    (err,) = await _refused(herald, [SMS, {"type": "delay", "duration": "-PT5M"}, SMS])
    assert err["loc"] == ["body", "steps", 1, "delay", "duration"]
    assert "positive duration" in err["msg"]


async def test_digest_without_window_is_refused(herald: Herald) -> None:
    (err,) = await _refused(herald, [{"type": "digest"}, SMS])
    assert err["loc"] == ["body", "steps", 0, "digest", "window"]
    assert err["type"] == "missing"


async def test_wait_must_be_followed_by_a_send(herald: Herald) -> None:
    (err,) = await _refused(herald, [SMS, {"type": "wait", "duration": "PT1H"}])
    assert err["loc"] == ["body", "steps", 1, "type"]
    assert err["type"] == "wait_without_send"
    assert "followed by a send" in err["msg"]


async def test_unknown_step_type_is_refused(herald: Herald) -> None:
    (err,) = await _refused(herald, [SMS, {"type": "teleport"}])
    assert err["loc"] == ["body", "steps", 1, "type"]
    assert err["type"] == "unknown_step_type"
    assert "delay, wait or digest" in err["msg"]


async def test_unknown_channel_names_the_channel_field(herald: Herald) -> None:
    (err,) = await _refused(herald, [{"channel": "pigeon", "text": "x"}])
    assert (err["loc"], err["type"]) == (["body", "steps", 0, "channel"], "unknown_step_type")


async def test_delay_with_two_targets_is_refused(herald: Herald) -> None:
    (err,) = await _refused(
        herald, [SMS, {"type": "delay", "duration": "PT5M", "until_local": "09:00"}, SMS]
    )
    assert err["loc"] == ["body", "steps", 1, "delay"]
    assert err["type"] == "delay_target"
    assert "exactly one of duration, until or until_local" in err["msg"]


async def test_digest_must_be_the_first_step(herald: Herald) -> None:
    (err,) = await _refused(herald, [SMS, {"type": "digest", "window": "PT1H"}, SMS])
    assert err["loc"] == ["body", "steps", 1, "type"]
    assert err["type"] == "digest_not_first"


async def test_every_cross_step_problem_is_reported_at_once(herald: Herald) -> None:
    detail = await _refused(
        herald,
        [SMS, {"type": "digest", "window": "PT1H"}, SMS, {"type": "wait", "duration": "PT1H"}],
    )
    assert sorted((e["loc"], e["type"]) for e in detail) == [
        (["body", "steps", 1, "type"], "digest_not_first"),
        (["body", "steps", 3, "type"], "wait_without_send"),
    ]


async def test_full_orchestration_flow_is_accepted(herald: Herald) -> None:
    steps = [
        {"type": "digest", "window": "PT10M", "key": "{{ data.thread }}", "max_items": 5},
        {"type": "delay", "until_local": "09:00"},
        {
            **EMAIL,
            "locales": {
                "de": {"subject": "Hallo", "text": "Hallo {{ data.name }}"},
                "pt-BR": {"subject": "Olá"},
            },
        },
        {"type": "wait", "duration": "PT1H"},
        {**SMS, "unless": "acknowledged", "locales": {"de": {"text": "Hallo"}}},
    ]
    body = {
        "event_type": "comment.created",
        "steps": steps,
        "throttle": {"limit": 3, "period": "PT1H", "key": "{{ data.thread }}"},
        "exit_on": ["comment.read", "thread.closed"],
        "default_locale": "de",
    }
    created = await herald.put_flow("comments", **body)
    assert [s.get("type") for s in created["steps"]] == ["digest", "delay", "send", "wait", "send"]
    got = (await herald.http.get("/v1/flows/comments")).json()
    assert got["throttle"] == {"limit": 3, "period": "PT1H", "key": "{{ data.thread }}"}
    assert got["exit_on"] == ["comment.read", "thread.closed"]
    assert got["default_locale"] == "de"
    assert got["steps"][0]["window"] == "PT10M"
    assert got["steps"][2]["locales"]["de"]["subject"] == "Hallo"
    assert got["steps"][4]["unless"] == "acknowledged"


async def test_broken_template_in_a_locale_variant_is_422(herald: Herald) -> None:
    broken = {**SMS, "locales": {"en": {"text": "fine"}, "de": {"text": "Hallo {{ data.name "}}}
    (err,) = await _refused(herald, [broken])
    assert err["loc"][:5] == ["body", "steps", 0, "sms", "locales"]
    assert "template error" in err["msg"]


async def test_broken_template_in_a_locale_variant_names_the_locale(herald: Herald) -> None:
    broken = {**SMS, "locales": {"en": {"text": "fine"}, "de": {"text": "Hallo {{ data.name "}}}
    (err,) = await _refused(herald, [broken])
    assert err["loc"] == ["body", "steps", 0, "sms", "locales"]
    assert "locale 'de', text: template error" in err["msg"], err


async def test_engagement_conditions_need_an_earlier_send(herald: Herald) -> None:
    (err,) = await _refused(herald, [{**SMS, "unless": "opened"}])
    assert err["loc"] == ["body", "steps", 0, "unless"]
    assert err["type"] == "engagement_without_send"
    (err,) = await _refused(herald, [{"type": "wait", "duration": "PT1H", "until": "clicked"}, SMS])
    assert err["loc"] == ["body", "steps", 0, "until"]
    (err,) = await _refused(herald, [EMAIL, {**SMS, "unless": "read"}])
    assert err["loc"][:4] == ["body", "steps", 1, "sms"]
    assert err["loc"][-1] == "unless"
