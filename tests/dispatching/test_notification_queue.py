"""A one-channel notification runs on its channel's queue, so its send needs no second hop."""

from __future__ import annotations

from typing import Any

import pytest

from core.flows import FlowDefinition
from core.settings import Settings
from core.types import Channel
from dispatching.outbox import notification_queue
from tests.conftest import HeraldFactory
from tests.fakes.provider import FakeProvider
from tests.workflows.test_notification import bounce_bad, ok_and_bad

EMAIL = {"channel": "email", "subject": "Hi", "text": "Hello"}
SMS = {"channel": "sms", "text": "Hello"}
DELAY = {"type": "delay", "duration": "PT1M"}


def flow(*steps: dict[str, Any]) -> FlowDefinition:
    return FlowDefinition.model_validate({"key": "f", "event_type": "e", "steps": list(steps)})


@pytest.mark.parametrize(
    ("steps", "queue"),
    [
        ([EMAIL], "hq-email"),
        ([DELAY, EMAIL, EMAIL], "hq-email"),
        ([SMS], "hq-sms"),
        ([EMAIL, SMS], "hq-workflows"),  # several channels: the workflows queue
        ([SMS, DELAY, EMAIL], "hq-workflows"),
    ],
)
def test_a_flow_of_one_channel_runs_on_that_channels_queue(
    steps: list[dict[str, Any]], queue: str
) -> None:
    settings = Settings.model_construct(task_queue_prefix="hq")
    assert notification_queue(settings, flow(*steps)) == queue


def test_a_rate_limited_channel_keeps_its_workflows_on_the_workflows_queue() -> None:
    """An eager send would bypass the server's rate limit for the channel's queue."""
    settings = Settings.model_construct(task_queue_prefix="hq", rate_limit_sms=5)
    assert notification_queue(settings, flow(SMS)) == "hq-workflows"
    assert notification_queue(settings, flow(EMAIL)) == "hq-email"


async def test_the_channel_worker_alone_sends_and_records_a_failure(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    """With only the email queue served, an email-only notification is sent, and a refused
    one is recorded failed (its record_failure runs next to the workflow, on that worker)."""
    herald = await herald_factory(queues=["email"])
    ok, bad = await ok_and_bad(herald)
    bounce_bad(fresh_provider)

    accepted = await herald.publish(type="user.signup", to=[ok, bad])
    event = await herald.wait_event(accepted["id"])

    status = {n["subscriber_id"]: n["status"] for n in event["notifications"]}
    assert status == {ok: "sent", bad: "failed"}
    for n in event["notifications"]:
        described = await herald.client.get_workflow_handle(n["workflow_id"]).describe()
        assert described.task_queue == herald.settings.channel_task_queue(Channel.EMAIL)
    sent = [r for r in fresh_provider.requests("sendgrid") if r.status == 202]
    assert len(sent) == 1
