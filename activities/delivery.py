"""The send activity: re-read preferences, render, call the provider once, record the outcome."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.defn import uninterrupted
from activities.pacing import Pacer
from activities.policies import (
    ORPHANED,
    PERMANENT_PROVIDER,
    PERMANENT_RECIPIENT,
    PROVIDER_NOT_CONFIGURED,
    TEMPLATE_ERROR,
    TRANSIENT,
)
from activities.render import NoAddressError, build_message
from activities.tracking import Tracker
from activities.webhooks import WebhookSends
from channels.base import (
    ChannelAdapter,
    Message,
    PermanentProviderError,
    SendResult,
    TransientProviderError,
)
from channels.registry import Adapters
from core.flows import ACKNOWLEDGED, AnySendStep
from core.lifecycle import ENGAGEMENT
from core.metrics import PROVIDER_LATENCY, RATE_LIMIT_WAIT, count_delivery
from core.preferences import decide, quiet_until
from core.settings import get_settings
from core.templates import TemplateError
from core.types import Channel, DeliveryStatus
from store.db import read_scope, session_scope
from store.deliveries import (
    DeliveryContext,
    DeliveryGone,
    add_sandbox_message,
    engaged_before,
    is_final,
    load_context,
    reopen,
    transition,
)
from store.engagement import NewLink, save_links
from store.lifecycle import mark_sent
from store.models import Delivery, Preference, Subscriber
from store.notifications import events_in_order, schedule
from store.subscribers import disable_webhook_url, opt_out_channel, remove_push_tokens

log = logging.getLogger(__name__)

# Twilio's "attempt to send to unsubscribed recipient": the person replied STOP.
TWILIO_UNSUBSCRIBED = "21610"


class DeliverInput(BaseModel):
    delivery_id: str
    # Only for the log lines of the attempt (activities.logcontext); decides nothing.
    notification_id: str | None = None
    flow_key: str
    category: str
    critical: bool
    step: AnySendStep
    default_locale: str = "en"
    # Set when this send carries a digest: the events folded into it, oldest first.
    digest_event_ids: list[str] | None = None
    # `unless: acknowledged`, and whether the workflow has seen the acknowledge signal.
    unless_acknowledged: bool = False
    acknowledged: bool = False
    # `unless: delivered|opened|clicked`, and the engagement the workflow was signalled;
    # the stored status is checked too, so a lost signal cannot cause a wrong send.
    unless: str | None = None
    engaged: list[str] = []
    # The workflow's clock when it scheduled the send, for quiet hours (tests skip time).
    now: datetime | None = None
    # Which of the channel's providers to use (None: the worker's first), and the one the
    # workflow will fail over to, so a provider-level refusal leaves the delivery pending.
    provider: str | None = None
    fallback: str | None = None
    # Attempts spent on earlier providers, so `attempts` counts the whole delivery.
    prior_attempts: int = 0


class DeliverResult(BaseModel):
    delivery_id: str
    channel: Channel
    status: DeliveryStatus
    reason: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    # `scheduled`: quiet hours, ask again at this time.
    scheduled_for: datetime | None = None
    # The notification was stopped (cancelled, exit_on): skip every later step too.
    stopped: str | None = None


class RecordFailureInput(BaseModel):
    delivery_id: str
    reason: str


class ReopenInput(BaseModel):
    delivery_id: str
    reason: str


@dataclass
class Decision:
    """What ``DeliveryActivities.decide`` found: exactly one of these is set."""

    message: Message | None = None
    links: list[NewLink] = field(default_factory=list)
    skip: str | None = None
    # The notification was stopped: every later step is skipped too.
    stopped: str | None = None
    quiet: tuple[datetime, str] | None = None
    template_error: TemplateError | None = None


class DeliveryActivities:
    """Holds the engine and adapters so activities get them without globals."""

    def __init__(
        self,
        engine: Engine,
        adapters: Adapters,
        pacers: dict[Channel, Pacer] | None = None,
        tracker: Tracker | None = None,
        webhooks: WebhookSends | None = None,
    ) -> None:
        self.engine = engine
        self.adapters = adapters
        # Webhook signing secrets and the per-tenant bound; built from the environment's
        # settings on first use when not given (tests that send no webhooks).
        self._webhooks = webhooks
        # Rate-limited channels: calls spaced evenly in this process (see activities.pacing).
        self.pacers = pacers or {}
        # Open pixel, tracked links and unsubscribe headers; None leaves messages as rendered.
        self.tracker = tracker

    @property
    def webhooks(self) -> WebhookSends:
        if self._webhooks is None:
            self._webhooks = WebhookSends(self.engine, get_settings())
        return self._webhooks

    def _send(self, adapter: ChannelAdapter, message: Message) -> SendResult:
        """The provider call; a webhook is signed and waits for its tenant's turn first."""
        with self.webhooks.turn(adapter, message.tenant_id):
            return timed_send(adapter, self.webhooks.sign(adapter, message))

    def sandbox_sink(self, message: Message) -> None:
        with session_scope(self.engine) as session:
            add_sandbox_message(
                session,
                tenant_id=message.tenant_id,
                delivery_id=message.delivery_id,
                channel=message.channel.value,
                to=list(message.to),
                content=dataclasses.asdict(message.content),
            )

    @uninterrupted("deliver")
    def deliver(self, inp: DeliverInput) -> DeliverResult:
        try:
            result = self._deliver(inp)
        except DeliveryGone as exc:  # deleted while this attempt ran
            raise orphaned(str(exc)) from exc
        count_delivery(result.channel, result.provider, result.status)  # sent, skipped…
        return result

    def _deliver(self, inp: DeliverInput) -> DeliverResult:
        channel = Channel(inp.step.channel)
        attempt = activity.info().attempt
        attempts = inp.prior_attempts + attempt
        providers = self.adapters[channel]
        name = inp.provider or next(iter(providers))
        adapter = providers.get(name)
        if adapter is None:
            raise ApplicationError(
                f"{channel.value} provider {name!r} is not configured on this worker "
                f"(it has {', '.join(providers)})",
                name,
                inp.prior_attempts,
                type=PROVIDER_NOT_CONFIGURED,
                non_retryable=True,
            )
        prepared = self._prepare(inp, channel, attempts)
        if isinstance(prepared, DeliverResult):
            return prepared
        message, subscriber_id, links = prepared
        if links:
            # Before the send: a click may come back before the send is recorded.
            with session_scope(self.engine) as session:
                save_links(session, links)
        pacer = self.pacers.get(channel)
        if pacer is not None:
            waiting = time.monotonic()
            pacer.wait()
            RATE_LIMIT_WAIT.labels(channel.value).observe(time.monotonic() - waiting)
        try:
            sent = self._send(adapter, message)
        except PermanentProviderError as exc:
            fails_over = inp.fallback is not None and not exc.recipient
            count_delivery(channel, exc.provider, "failover" if fails_over else "failed")
            with session_scope(self.engine) as session:
                transition(
                    session,
                    inp.delivery_id,
                    DeliveryStatus.PENDING if fails_over else DeliveryStatus.FAILED,
                    detail=f"{exc}; failing over to {inp.fallback}" if fails_over else str(exc),
                    attempts=attempts,
                    provider=exc.provider,
                )
                apply_verdict(session, message, subscriber_id, exc)
            raise ApplicationError(
                str(exc),
                exc.code,
                attempts,
                type=PERMANENT_RECIPIENT if exc.recipient else PERMANENT_PROVIDER,
                non_retryable=True,
            ) from exc
        except TransientProviderError as exc:
            count_delivery(channel, exc.provider, "retrying")
            with session_scope(self.engine) as session:
                transition(
                    session,
                    inp.delivery_id,
                    DeliveryStatus.PENDING,
                    detail=f"attempt {attempts} failed: {exc}",
                    attempts=attempts,
                    provider=exc.provider,
                )
            delay = None if exc.retry_after is None else timedelta(seconds=exc.retry_after)
            raise ApplicationError(
                str(exc), exc.code, attempts, type=TRANSIENT, next_retry_delay=delay
            ) from exc
        with session_scope(self.engine) as session:
            row = mark_sent(
                session,
                inp.delivery_id,
                flow_key=inp.flow_key,
                category=inp.category,
                attempts=attempts,
                provider=sent.provider,
                provider_message_id=sent.provider_message_id,
                delivered=sent.delivered,
            )
            if sent.invalid_tokens:
                remove_push_tokens(session, message.tenant_id, subscriber_id, sent.invalid_tokens)
            return result_of(row)

    def _prepare(
        self, inp: DeliverInput, channel: Channel, attempt: int
    ) -> DeliverResult | tuple[Message, str, list[NewLink]]:
        """Read everything without the write lock; write only for a skip, quiet hours or a
        broken template (see ``decide``)."""
        with read_scope(self.engine) as session:
            ctx = load_context(session, inp.delivery_id)
            if ctx is None:
                raise orphaned(f"delivery {inp.delivery_id} does not exist")
            if is_final(ctx.delivery):
                # Finished by an earlier attempt whose completion was lost: never resend.
                return result_of(ctx.delivery)
            d = self.decide(session, inp, channel, ctx)
        if d.message is not None:
            assert ctx.subscriber is not None
            return d.message, ctx.subscriber.id, d.links
        skip, stopped, quiet, template_error = d.skip, d.stopped, d.quiet, d.template_error
        with session_scope(self.engine) as session:
            if quiet is not None:
                until, why = quiet
                return result_of(schedule(session, inp.delivery_id, until, why))
            if template_error is None:
                row = transition(session, inp.delivery_id, DeliveryStatus.SKIPPED, detail=skip)
                return result_of(row).model_copy(update={"stopped": stopped})
            transition(
                session,
                inp.delivery_id,
                DeliveryStatus.FAILED,
                detail=str(template_error),
                attempts=attempt,
            )
        raise ApplicationError(str(template_error), type=TEMPLATE_ERROR, non_retryable=True)

    def decide(
        self, session: Session, inp: DeliverInput, channel: Channel, ctx: DeliveryContext
    ) -> Decision:
        """Send, skip (and why), defer for quiet hours, or fail on a broken template.

        Decided just before the send, from fresh rows: a stop (cancellation, exit_on), an
        acknowledgement or engagement, suppression, the preferences and quiet hours.
        Reads only; the caller writes the outcome.
        """
        d = Decision()
        n = ctx.notification
        if n.stopped_at is not None:
            d.skip = d.stopped = n.stop_reason or "stopped"
        elif inp.unless_acknowledged and (inp.acknowledged or n.acknowledged_at is not None):
            d.skip = ACKNOWLEDGED
        elif inp.unless in ENGAGEMENT and (
            inp.unless in inp.engaged or engaged_before(session, ctx.delivery, inp.unless)
        ):
            d.skip = f"an earlier send was {inp.unless}"
        elif ctx.suppression is not None:
            d.skip = f"email address suppressed: {ctx.suppression.reason}"
        else:
            d.skip = _skip_reason(inp, channel, ctx.subscriber, ctx.preference)
        if d.skip is None and not inp.critical and ctx.preference is not None:
            d.quiet = _quiet(inp, ctx.preference, ctx.subscriber)
        if d.skip is not None or d.quiet is not None or ctx.subscriber is None:
            return d
        try:
            digest = (
                None
                if inp.digest_event_ids is None
                else events_in_order(session, inp.digest_event_ids)
            )
            message = build_message(
                inp.step,
                delivery_id=inp.delivery_id,
                event=ctx.event,
                subscriber=ctx.subscriber,
                default_locale=inp.default_locale,
                digest=digest,
            )
            if self.tracker is not None:
                message, d.links = self.tracker.apply(message, inp.step, critical=inp.critical)
            d.message = message
        except NoAddressError as exc:
            d.skip = str(exc)
        except TemplateError as exc:
            d.template_error = exc
        return d

    @uninterrupted("record_failure")
    def record_failure(self, inp: RecordFailureInput) -> DeliverResult:
        """Mark a delivery failed once Temporal has given up on it (attempts or deadline)."""
        try:
            with session_scope(self.engine) as session:
                return result_of(
                    transition(session, inp.delivery_id, DeliveryStatus.FAILED, detail=inp.reason)
                )
        except DeliveryGone as exc:
            raise orphaned(str(exc)) from exc

    @uninterrupted("reopen_delivery")
    def reopen_delivery(self, inp: ReopenInput) -> bool:
        """Failed → pending, so the next attempt may send; False if it was not failed."""
        with session_scope(self.engine) as session:
            return reopen(session, inp.delivery_id, inp.reason) is not None


def orphaned(reason: str) -> ApplicationError:
    """Non-retryable: a row that is gone stays gone, so retrying would only flood the logs."""
    return ApplicationError(
        f"{reason} (database reset or erased subscriber)", type=ORPHANED, non_retryable=True
    )


def apply_verdict(
    session: Session, message: Message, subscriber_id: str, exc: PermanentProviderError
) -> None:
    """What a permanent error says about the subscriber, remembered so it is not repeated."""
    tenant = message.tenant_id
    if exc.invalid_tokens:
        remove_push_tokens(session, tenant, subscriber_id, exc.invalid_tokens)
    if message.channel == Channel.SMS and exc.code == TWILIO_UNSUBSCRIBED:
        opt_out_channel(session, tenant, subscriber_id, Channel.SMS.value)
    gone = message.channel == Channel.WEBHOOK and exc.code == "410"
    if gone and not disable_webhook_url(session, tenant, subscriber_id, message.to[0]):
        log.warning("webhook %s is gone (410); it is a flow's URL, not disabled", message.to[0])


def _skip_reason(
    inp: DeliverInput,
    channel: Channel,
    subscriber: Subscriber | None,
    preference: Preference | None,
) -> str | None:
    if subscriber is None:
        return "subscriber no longer exists"
    prefs = None
    if preference is not None:
        prefs = {
            "channels": preference.channels,
            "categories": preference.categories,
            "flows": preference.flows,
        }
    return decide(
        prefs,
        channel=channel,
        flow_key=inp.flow_key,
        category=inp.category,
        critical=inp.critical,
    )


def _quiet(
    inp: DeliverInput, preference: Preference, subscriber: Subscriber | None
) -> tuple[datetime, str] | None:
    """When the subscriber's quiet hours around now end, and a summary for the UI."""
    tz = subscriber.timezone if subscriber is not None else "UTC"
    now = datetime.now(UTC) if inp.now is None else max(inp.now, datetime.now(UTC))
    until = quiet_until(preference.quiet_hours, now, tz)
    if until is None:
        return None
    return until.astimezone(UTC), f"quiet hours until {until:%H:%M} {tz}"


def result_of(row: Delivery) -> DeliverResult:
    return DeliverResult(
        delivery_id=row.id,
        channel=Channel(row.channel),
        status=DeliveryStatus(row.status),
        reason=row.reason,
        provider=row.provider,
        provider_message_id=row.provider_message_id,
        scheduled_for=row.scheduled_for,
    )


def timed_send(adapter: ChannelAdapter, message: Message) -> SendResult:
    """The provider call, timed by outcome: ok, transient or permanent."""
    started = time.monotonic()
    outcome = "ok"
    try:
        return adapter.send(message)
    except TransientProviderError:
        outcome = "transient"
        raise
    except PermanentProviderError:
        outcome = "permanent"
        raise
    finally:
        PROVIDER_LATENCY.labels(adapter.channel.value, adapter.provider, outcome).observe(
            time.monotonic() - started
        )
