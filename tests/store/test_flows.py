"""A flow's exit_on is kept as rows, in step with every save and delete of the flow."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from store.db import session_scope
from store.flows import delete_flow, exiting_flows, put_flow
from tests.conftest import unique


def _flow(exit_on: list[str]) -> dict[str, object]:
    steps = [{"channel": "sms", "text": "x"}]
    return {"event_type": "user.signup", "steps": steps, "exit_on": exit_on}


def test_exit_rows_follow_the_flow(engine: Engine) -> None:
    tenant = unique("tenant")
    with session_scope(engine) as s:
        put_flow(s, tenant, "drip", _flow(["order.placed", "user.deleted", "order.placed"]))
        put_flow(s, tenant, "other", _flow(["order.placed"]))
    with session_scope(engine) as s:
        assert sorted(exiting_flows(s, tenant, "order.placed")) == ["drip", "other"]
        assert exiting_flows(s, tenant, "user.deleted") == ["drip"]
        put_flow(s, tenant, "drip", _flow(["user.deleted"]))
    with session_scope(engine) as s:
        assert exiting_flows(s, tenant, "order.placed") == ["other"]
        assert delete_flow(s, tenant, "other")
    with session_scope(engine) as s:
        assert exiting_flows(s, tenant, "order.placed") == []
        assert exiting_flows(s, tenant, "user.deleted") == ["drip"]
        assert exiting_flows(s, unique("tenant"), "user.deleted") == []
