from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from core.settings import Settings
from core.types import Channel
from tests.conftest import HeraldFactory, make_settings
from tests.fakes.provider import FakeProvider
from tests.workflows.test_notification import bounce_bad, ok_and_bad, visible
from workflows import notification
from workflows.runtime import ALL_QUEUES, build_workers, cache_workflow_bytecode, parse_queues


def test_parse_queues() -> None:
    assert parse_queues(None) == list(ALL_QUEUES)
    assert parse_queues("email, sms,email") == ["email", "sms"]
    with pytest.raises(ValueError, match="fax"):
        parse_queues("email,fax")
    with pytest.raises(ValueError):
        parse_queues(" , ")


def test_workflow_bytecode_is_cached_for_the_sandbox() -> None:
    """The sandbox re-imports workflow modules per execution; they must not be recompiled."""
    source = str(Path(notification.__file__))
    cached = Path(importlib.util.cache_from_source(source))
    cached.unlink(missing_ok=True)  # as under PYTHONDONTWRITEBYTECODE=1
    cache_workflow_bytecode()
    assert cached.exists()


def test_the_workflow_sandbox_is_on_in_dev_and_test_and_off_in_production() -> None:
    assert Settings.model_construct(env="dev").sandboxed_workflows
    assert Settings.model_construct(env="test").sandboxed_workflows
    assert not Settings.model_construct(env="production").sandboxed_workflows
    assert Settings.model_construct(env="production", workflow_sandbox=True).sandboxed_workflows
    assert not Settings.model_construct(env="test", workflow_sandbox=False).sandboxed_workflows


@pytest.mark.parametrize("sandbox", [True, False])
async def test_the_workflow_worker_runs_the_configured_runner(
    sandbox: bool, temporal_env: WorkflowEnvironment, engine: Engine, database_url: str
) -> None:
    settings, _, _ = make_settings(database_url, workflow_sandbox=sandbox)
    workers, executor = build_workers(temporal_env.client, settings, engine)
    executor.shutdown()
    # Channel workers run one-channel notifications' workflows too.
    runners = [type(w.config()["workflow_runner"]) for w in workers]
    expected = SandboxedWorkflowRunner if sandbox else UnsandboxedWorkflowRunner
    assert runners == [expected] * len(ALL_QUEUES)


async def test_only_a_rate_limited_channel_worker_refuses_eager_sends(
    temporal_env: WorkflowEnvironment, engine: Engine, database_url: str
) -> None:
    """An eager send skips the server's per-queue limit, so a limited channel goes without."""
    settings, _, _ = make_settings(database_url, rate_limit_sms=5)
    workers, executor = build_workers(temporal_env.client, settings, engine)
    executor.shutdown()
    eager_off = {w.task_queue: w.config()["disable_eager_activity_execution"] for w in workers}
    assert eager_off == {
        settings.workflow_task_queue: False,
        **{settings.channel_task_queue(c): c == Channel.SMS for c in Channel},
    }


async def test_without_the_sandbox_notifications_send_fail_and_are_filterable(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    """Production's runner: the suite's other tests run every workflow in the sandbox."""
    herald = await herald_factory(workflow_sandbox=False)
    ok, bad = await ok_and_bad(herald)
    for _ in range(2):  # a second execution in the same process: no state carried over
        bounce_bad(fresh_provider)
        accepted = await herald.publish(type="user.signup", to=[ok, bad])
        event = await herald.wait_event(accepted["id"])
        status = {n["subscriber_id"]: n["status"] for n in event["notifications"]}
        assert status == {ok: "sent", bad: "failed"}
    tenant = f'HeraldTenant="{herald.tenant}"'
    await visible(herald.client, f'{tenant} AND HeraldStatus="sent"', 2)
    await visible(herald.client, f'{tenant} AND HeraldStatus="failed"', 2)
    assert len(fresh_provider.requests("sendgrid")) == 4
