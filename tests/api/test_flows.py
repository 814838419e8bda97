from __future__ import annotations

import asyncio

from sqlalchemy import func
from sqlmodel import col, select

from store.db import read_scope
from store.models import Flow, FlowExit
from tests.conftest import Herald

STEP = {"channel": "email", "subject": "Hi", "text": "Hello"}


async def test_flow_crud_and_versioning(herald: Herald) -> None:
    created = await herald.put_flow("welcome", event_type="user.signup", steps=[STEP])
    assert created["version"] == 1
    assert created["category"] == "transactional"
    assert created["critical"] is False
    updated = await herald.put_flow(
        "welcome", event_type="user.signup", steps=[STEP, {"channel": "sms", "text": "Hi"}]
    )
    assert updated["version"] == 2
    assert [s["channel"] for s in updated["steps"]] == ["email", "sms"]
    listed = (await herald.http.get("/v1/flows")).json()
    assert [f["key"] for f in listed] == ["welcome"]
    assert (await herald.http.get("/v1/flows/welcome")).json()["version"] == 2
    assert (await herald.http.delete("/v1/flows/welcome")).status_code == 204
    assert (await herald.http.get("/v1/flows/welcome")).status_code == 404
    assert (await herald.http.delete("/v1/flows/welcome")).status_code == 404


async def test_broken_template_is_422_naming_step_and_field(herald: Herald) -> None:
    r = await herald.http.put(
        "/v1/flows/broken",
        json={
            "event_type": "x.y",
            "steps": [STEP, {"channel": "sms", "text": "Hi {{ subscriber.name "}],
        },
    )
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "steps", 1, "sms", "text"]
    assert "template" in err["msg"]
    assert (await herald.http.get("/v1/flows/broken")).status_code == 404


async def test_bad_step_definitions_are_422(herald: Herald) -> None:
    cases = [
        ({"event_type": "x.y", "steps": []}, ["body", "steps"]),
        (
            {"event_type": "x.y", "steps": [{"channel": "fax", "text": "x"}]},
            ["body", "steps", 0, "channel"],
        ),
        (
            {"event_type": "x.y", "steps": [{"channel": "email", "text": "x"}]},
            ["body", "steps", 0, "email", "subject"],
        ),
        (
            {"event_type": "x.y", "steps": [{"channel": "webhook", "url": "not a url"}]},
            ["body", "steps", 0, "webhook", "url"],
        ),
        (
            {"event_type": "x.y", "steps": [{**STEP, "colour": "red"}]},
            ["body", "steps", 0, "email", "colour"],
        ),
        ({"steps": [STEP]}, ["body", "event_type"]),
    ]
    for body, loc in cases:
        r = await herald.http.put("/v1/flows/f1", json=body)
        assert r.status_code == 422, body
        assert loc in [e["loc"] for e in r.json()["detail"]], (body, r.json())


async def test_sandboxed_templates_cannot_reach_python_internals(herald: Herald) -> None:
    # Compiles fine, but the sandbox refuses it at render time: the send fails, nothing leaks.
    evil = "{{ subscriber.__class__.__mro__ }}"
    r = await herald.http.put(
        "/v1/flows/evil", json={"event_type": "x.y", "steps": [{**STEP, "text": evil}]}
    )
    assert r.status_code == 200
    sub = "evil-target"
    await herald.put_subscriber(sub, email="a@example.com")
    event = await herald.wait_event((await herald.publish(type="x.y", to=[sub]))["id"])
    delivery = event["notifications"][0]["deliveries"][0]
    assert delivery["status"] == "failed"
    assert "template" in delivery["reason"]


async def test_concurrent_puts_of_a_new_key_all_succeed_with_one_row(herald: Herald) -> None:
    body = {"event_type": "user.signup", "steps": [STEP], "exit_on": ["user.deleted"]}
    answers = await asyncio.gather(
        *(herald.http.put("/v1/flows/racy", json=body) for _ in range(10))
    )
    assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers]
    # Each PUT is one version: none lost, none repeated.
    assert sorted(r.json()["version"] for r in answers) == list(range(1, 11))
    with read_scope(herald.engine) as s:
        flows = s.exec(
            select(func.count())
            .select_from(Flow)
            .where(Flow.tenant_id == herald.tenant, Flow.key == "racy")
        ).one()
        exits = s.exec(
            select(col(FlowExit.event_type)).where(
                FlowExit.tenant_id == herald.tenant, FlowExit.flow_key == "racy"
            )
        ).all()
    assert (flows, list(exits)) == (1, ["user.deleted"])
