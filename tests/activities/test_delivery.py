"""The send activity on its own: it must never send a finished delivery again."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.delivery import DeliverInput, DeliveryActivities
from channels.registry import build_adapters
from core.flows import EmailStep
from core.settings import Settings
from core.types import DeliveryStatus
from store.db import session_scope
from store.deliveries import history
from store.flows import put_flow
from store.subscribers import upsert_subscriber
from tests.conftest import accept_one, unique
from tests.fakes.provider import FakeProvider, sendgrid_error_body


def _setup(engine: Engine, email: str | None) -> tuple[str, DeliverInput]:
    tenant, sub = unique("t"), unique("u")
    with session_scope(engine) as s:
        upsert_subscriber(s, tenant, sub, {"email": email})
        put_flow(
            s,
            tenant,
            "f",
            {"event_type": "e.t", "steps": [{"channel": "email", "subject": "S", "text": "T"}]},
        )
    accepted = accept_one(engine, tenant, "e.t", sub)
    (planned,) = accepted.notifications
    inp = DeliverInput(
        delivery_id=str(planned.delivery_ids[0]),
        flow_key="f",
        category="transactional",
        critical=False,
        step=EmailStep(subject="S", text="T"),
    )
    return tenant, inp


@pytest.fixture
def acts(engine: Engine, fresh_provider: FakeProvider, tmp_path: Path) -> DeliveryActivities:
    settings = Settings.model_validate(
        {"database_url": "sqlite://", **fresh_provider.settings_overrides(tmp_path)}
    )
    a = DeliveryActivities(engine, {})
    a.adapters = build_adapters(settings, a.sandbox_sink)
    return a


def test_finished_delivery_is_not_sent_again(
    acts: DeliveryActivities, engine: Engine, fresh_provider: FakeProvider
) -> None:
    _, inp = _setup(engine, "a@example.com")
    env = ActivityEnvironment()
    first = env.run(acts.deliver, inp)
    again = env.run(acts.deliver, inp)
    assert first.status == again.status == DeliveryStatus.SENT
    assert again.provider_message_id == first.provider_message_id
    assert len(fresh_provider.requests("sendgrid")) == 1
    with session_scope(engine) as s:
        assert [h.status for h in history(s, inp.delivery_id)] == ["pending", "sent"]


def test_permanent_error_is_non_retryable_and_recorded(
    acts: DeliveryActivities, engine: Engine, fresh_provider: FakeProvider
) -> None:
    _, inp = _setup(engine, "a@example.com")
    fresh_provider.fail("sendgrid", 400, body=sendgrid_error_body("Invalid recipient"))
    with pytest.raises(ApplicationError) as info:
        ActivityEnvironment().run(acts.deliver, inp)
    assert info.value.non_retryable
    assert info.value.type == "PermanentProviderError"
    with session_scope(engine) as s:
        (pending, failed) = history(s, inp.delivery_id)
    assert failed.status == "failed" and "Invalid recipient" in (failed.detail or "")


def test_retry_after_becomes_next_retry_delay(
    acts: DeliveryActivities, engine: Engine, fresh_provider: FakeProvider
) -> None:
    _, inp = _setup(engine, "a@example.com")
    fresh_provider.fail("sendgrid", 429, headers={"Retry-After": "3"})
    with pytest.raises(ApplicationError) as info:
        ActivityEnvironment().run(acts.deliver, inp)
    assert not info.value.non_retryable
    assert info.value.next_retry_delay is not None
    assert info.value.next_retry_delay.total_seconds() == 3


def test_no_address_is_skipped_without_calling_the_provider(
    acts: DeliveryActivities, engine: Engine, fresh_provider: FakeProvider
) -> None:
    _, inp = _setup(engine, None)
    result = ActivityEnvironment().run(acts.deliver, inp)
    assert result.status == DeliveryStatus.SKIPPED
    assert result.reason == "subscriber has no email address"
    assert fresh_provider.requests("sendgrid") == []
