"""A notification's status as GET /v1/events shows it (store.events.notification_status)."""

from __future__ import annotations

from core.types import DeliveryStatus, NotificationStatus
from store.events import notification_status
from store.models import Delivery


def _deliveries(*statuses: DeliveryStatus) -> list[Delivery]:
    return [
        Delivery(
            id=f"dlv_{i}",
            tenant_id="t",
            notification_id="ntf_1",
            step_index=i,
            channel="email",
            status=s.value,
        )
        for i, s in enumerate(statuses)
    ]


def test_before_the_dispatched_mark_a_delivery_past_pending_shows_it_running() -> None:
    # The outbox marks events dispatched in batches; the workflow may act first.
    scheduled = _deliveries(DeliveryStatus.SCHEDULED)
    assert notification_status(scheduled, dispatched=False) == NotificationStatus.RUNNING
    halfway = _deliveries(DeliveryStatus.SENT, DeliveryStatus.PENDING)
    assert notification_status(halfway, dispatched=False) == NotificationStatus.RUNNING


def test_untouched_deliveries_follow_the_dispatched_mark() -> None:
    pending = _deliveries(DeliveryStatus.PENDING, DeliveryStatus.PENDING)
    assert notification_status(pending, dispatched=False) == NotificationStatus.PENDING
    assert notification_status(pending, dispatched=True) == NotificationStatus.RUNNING


def test_finished_deliveries_give_the_outcome_whatever_the_mark() -> None:
    sent = _deliveries(DeliveryStatus.SENT)
    assert notification_status(sent, dispatched=False) == notification_status(sent, True)
    assert notification_status(sent, dispatched=True) != NotificationStatus.RUNNING
