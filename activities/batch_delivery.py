"""A broadcast's fast path: one activity sends a whole batch through the provider's batch API.

Each recipient is decided exactly as a single send is (``DeliveryActivities.decide``),
but the reads, the skips and the records are one transaction each for the batch, and the
sends go out as SendGrid personalizations, FCM ``send_each`` calls, or a bounded pool.
Recipients in quiet hours are handed back: their own notification workflow defers them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.delivery import DeliverInput, DeliveryActivities, apply_verdict
from activities.policies import TRANSIENT
from channels.base import (
    ChannelAdapter,
    Message,
    PermanentProviderError,
    SendResult,
    TransientProviderError,
)
from channels.batch import send_all
from core.flows import AnySendStep
from core.types import Channel, DeliveryStatus
from store.batch_contexts import load_contexts
from store.db import read_scope, session_scope
from store.deliveries import is_final, transition
from store.engagement import save_links
from store.lifecycle import Sent, mark_sent, mark_sent_many
from store.rollups import Increments

log = logging.getLogger(__name__)

# Sends in flight at once for providers without a batch API (SMS, webhooks), per batch.
POOL = 16
# Messages sent and recorded together when the provider has no batch API.
CHUNK = 100


class BatchDeliverInput(BaseModel):
    flow_key: str
    category: str
    critical: bool
    default_locale: str = "en"
    step: AnySendStep
    delivery_ids: list[str]
    now: datetime | None = None


class BatchDeliverResult(BaseModel):
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    # In quiet hours: the broadcast starts these deliveries' notification workflows.
    deferred: list[str] = []


class BatchDelivery:
    def __init__(self, single: DeliveryActivities) -> None:
        self.single = single

    @activity.defn(name="deliver_batch")
    def deliver_batch(self, inp: BatchDeliverInput) -> BatchDeliverResult:
        channel = Channel(inp.step.channel)
        providers = self.single.adapters[channel]
        adapter = next(iter(providers.values()))
        result = BatchDeliverResult()
        sends: list[tuple[str, str, Message]] = []  # delivery id, subscriber id, message
        # Cancellation (a broadcast cancelled, a worker's shutdown) lands between chunks,
        # never inside a transaction or between a chunk's send and its record (see
        # activities.defn.uninterrupted for what an exception raised there did).
        with activity.shield_thread_cancel_exception():
            self._decide(inp, channel, result, sends)
        activity.heartbeat("decided")
        pacer = self.single.pacers.get(channel)
        # Sent and recorded a chunk at a time, heartbeating in between: a worker killed
        # mid-batch repeats at most one chunk, and a paced channel still heartbeats.
        size = getattr(adapter, "max_batch", CHUNK)
        if pacer is not None:
            size = max(1, min(size, int(10 / pacer.interval)))  # ~10 s of sends
        for start in range(0, len(sends), size):
            with activity.shield_thread_cancel_exception():
                self._send_chunk(inp, channel, adapter, sends[start : start + size], result)
            activity.heartbeat(start + size)
        return result

    def _decide(
        self,
        inp: BatchDeliverInput,
        channel: Channel,
        result: BatchDeliverResult,
        sends: list[tuple[str, str, Message]],
    ) -> None:
        """Who is sent to, skipped, deferred or failed; records all but the sends."""
        skips: list[tuple[str, str]] = []
        broken: list[tuple[str, str]] = []
        links = []
        with read_scope(self.single.engine) as session:
            for ctx in load_contexts(session, inp.delivery_ids):
                if is_final(ctx.delivery):
                    continue  # sent by an earlier try of this batch: never again
                d = self.single.decide(session, self._single(inp, ctx.delivery.id), channel, ctx)
                if d.message is not None and ctx.subscriber is not None:
                    sends.append((ctx.delivery.id, ctx.subscriber.id, d.message))
                    links += d.links
                elif d.quiet is not None:
                    result.deferred.append(ctx.delivery.id)
                elif d.template_error is not None:
                    broken.append((ctx.delivery.id, str(d.template_error)))
                else:
                    skips.append((ctx.delivery.id, d.skip or "skipped"))
        with session_scope(self.single.engine) as session:
            for delivery_id, why in skips:
                transition(session, delivery_id, DeliveryStatus.SKIPPED, detail=why)
            for delivery_id, why in broken:
                transition(session, delivery_id, DeliveryStatus.FAILED, detail=why, attempts=1)
            save_links(session, links)
        result.skipped, result.failed = len(skips), len(broken)

    def _send_chunk(
        self,
        inp: BatchDeliverInput,
        channel: Channel,
        adapter: ChannelAdapter,
        sends: list[tuple[str, str, Message]],
        result: BatchDeliverResult,
    ) -> None:
        pacer = self.single.pacers.get(channel)
        try:
            outcomes = send_all(
                adapter,
                self.single.webhooks.sign_all(adapter, [m for _, _, m in sends]),
                concurrency=POOL,
                before_each=None if pacer is None else pacer.wait,
            )
        except TransientProviderError as exc:  # nothing in this chunk went out
            raise _transient(str(exc), exc.retry_after) from exc
        retry_after: float | None = None
        unsent = 0
        attempt = activity.info().attempt
        incs = Increments()
        accepted: list[Sent] = []
        with session_scope(self.single.engine) as session:
            for (delivery_id, subscriber_id, message), outcome in zip(sends, outcomes, strict=True):
                if isinstance(outcome, SendResult) and not outcome.delivered:
                    accepted.append(
                        Sent(delivery_id, outcome.provider, outcome.provider_message_id)
                    )
                elif isinstance(outcome, SendResult):  # a webhook's 2xx: delivered too
                    mark_sent(
                        session,
                        delivery_id,
                        flow_key=inp.flow_key,
                        category=inp.category,
                        attempts=attempt,
                        provider=outcome.provider,
                        provider_message_id=outcome.provider_message_id,
                        delivered=True,
                        incs=incs,
                    )
                    result.sent += 1
                elif isinstance(outcome, PermanentProviderError):
                    transition(
                        session,
                        delivery_id,
                        DeliveryStatus.FAILED,
                        detail=str(outcome),
                        attempts=attempt,
                        provider=outcome.provider,
                    )
                    apply_verdict(session, message, subscriber_id, outcome)
                    result.failed += 1
                else:
                    unsent += 1
                    retry_after = max(retry_after or 0.0, outcome.retry_after or 0.0) or None
            mark_sent_many(
                session,
                accepted,
                flow_key=inp.flow_key,
                category=inp.category,
                attempts=attempt,
                incs=incs,
            )
            result.sent += len(accepted)
            incs.flush(session)
        if unsent:
            # What went out is recorded; the retry sends only the rest.
            raise _transient(f"{unsent} of {len(sends)} {channel.value} sends failed", retry_after)

    @staticmethod
    def _single(inp: BatchDeliverInput, delivery_id: str) -> DeliverInput:
        return DeliverInput(
            delivery_id=delivery_id,
            flow_key=inp.flow_key,
            category=inp.category,
            critical=inp.critical,
            step=inp.step,
            default_locale=inp.default_locale,
            now=inp.now,
        )


def _transient(message: str, retry_after: float | None) -> ApplicationError:
    delay = None if retry_after is None else timedelta(seconds=retry_after)
    return ApplicationError(message, type=TRANSIENT, next_retry_delay=delay)
