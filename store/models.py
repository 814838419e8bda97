"""Tables and their API shapes, split as XBase / XCreate / X(table=True) / XPublic."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BeforeValidator,
    Discriminator,
    EmailStr,
    StrictBool,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)
from pydantic import Field as PydanticField
from pydantic_core import PydanticCustomError
from sqlalchemy import JSON, DateTime, Index, UniqueConstraint, text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from core.flows import (
    EVENT_TYPE_PATTERN,
    FLOW_KEY_PATTERN,
    LOCALE_PATTERN,
    StepIn,
    ThrottleIn,
    check_step_tags,
    check_steps,
)
from core.json_types import JSON_NUMBER, JsonInt
from core.limits import (
    at_most,
    check_data,
    check_flow_size,
    count_check,
    limits,
    max_items,
    maximum,
)
from core.preferences import PreferenceSet, iana_timezone, timezone_enum
from core.types import Channel, DeliveryStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Always hands back aware UTC datetimes; SQLite would otherwise drop the zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, **kw)


# ASCII digits only (``\d`` takes any script's), matched whole (``$`` lets a newline by).
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
E164 = re.compile(E164_PATTERN)
LOCALE = re.compile(LOCALE_PATTERN)
SUBSCRIBER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$"
# PostgreSQL text cannot hold U+0000: strings that reach a text column or a query refuse it.
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, StringConstraints(pattern=NO_NUL)]
MAX_PUSH_TOKEN = 4096
MAX_URL = 2048  # the column's length
# RFC 3339, as the OpenAPI ``date-time`` format says: an offset is required, a number is not
# a time (pydantic alone takes 0.5 as 1970 and a naive time the database refuses).
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise PydanticCustomError(
            "datetime_format",
            "must be an RFC 3339 date-time with an offset, e.g. 2026-11-24T09:00:00Z",
        )
    return value


# Request times: aware, ISO 8601 strings only.
IsoDateTime = Annotated[datetime, BeforeValidator(_rfc3339)]
HTTP_URL_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://"


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


# What email-validator takes beyond the ``email`` format: a dotted domain that is not a
# special-use name (.test, .local, ...), a local part of at most 64 characters.
_SPECIAL_USE = "|".join(_any_case(d) for d in SPECIAL_USE_DOMAIN_NAMES)
EMAIL_PATTERN = rf"^[^@]{{1,64}}@(?![^@]*\.(?:{_SPECIAL_USE})$)[^@]+\.[^@]+$"
PushToken = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PUSH_TOKEN)]


def _stored_url(url: AnyHttpUrl) -> AnyHttpUrl:
    """As normalised (punycode, a trailing slash) it must still fit the column."""
    if len(str(url)) > MAX_URL:
        raise PydanticCustomError("url_too_long", "is over {max} characters", {"max": MAX_URL})
    return url


# --- tenants and keys -------------------------------------------------------


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"
    id: str = Field(primary_key=True, max_length=64)
    created_at: datetime = _ts()


# --- subscribers --------------------------------------------------------------


class SubscriberBase(SQLModel):
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=16)
    push_tokens: list[str] = Field(default_factory=list, sa_type=JSON)
    webhook_url: str | None = Field(default=None, max_length=2048)
    name: str | None = Field(default=None, max_length=200)
    locale: str = Field(default="en", max_length=35)
    timezone: str = Field(default="UTC", max_length=64)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class SubscriberCreate(SubscriberBase):
    email: EmailStr | None = PydanticField(
        default=None, json_schema_extra={"maxLength": 254, "pattern": EMAIL_PATTERN}
    )
    webhook_url: Annotated[AnyHttpUrl, AfterValidator(_stored_url)] | None = PydanticField(  # type: ignore[assignment]
        default=None, json_schema_extra={"maxLength": MAX_URL, "pattern": HTTP_URL_PATTERN}
    )
    phone: str | None = PydanticField(default=None, json_schema_extra={"pattern": E164_PATTERN})
    # Repeats are dropped, then the distinct tokens counted: no maxItems, which counts repeats.
    push_tokens: list[PushToken] = PydanticField(
        default_factory=list,
        description="At most HERALD_MAX_PUSH_TOKENS (20) distinct tokens; repeats are dropped",
    )
    locale: str = PydanticField(
        default="en", max_length=35, json_schema_extra={"pattern": LOCALE_PATTERN}
    )
    timezone: str = PydanticField(default="UTC", max_length=64, json_schema_extra=timezone_enum)
    name: str | None = PydanticField(default=None, max_length=200, pattern=NO_NUL)

    @field_validator("phone")
    @classmethod
    def _e164(cls, v: str | None) -> str | None:
        if v is not None and not E164.fullmatch(v):
            raise ValueError("must be an E.164 number such as +14155550100")
        return v

    @field_validator("timezone")
    @classmethod
    def _iana(cls, v: str) -> str:
        return iana_timezone(v)

    @field_validator("locale")
    @classmethod
    def _locale(cls, v: str) -> str:
        if not LOCALE.fullmatch(v):
            raise ValueError("must be a language tag such as en or pt-BR")
        return v

    @field_validator("push_tokens")
    @classmethod
    def _tokens(cls, v: list[str]) -> list[str]:
        distinct = list(dict.fromkeys(v))
        cap = limits().max_push_tokens
        if len(distinct) > cap:
            raise PydanticCustomError(
                "too_many_distinct",
                "has {count} distinct push tokens, over the limit of {cap} "
                "(HERALD_MAX_PUSH_TOKENS)",
                {"count": f"{len(distinct):,}", "cap": f"{cap:,}"},
            )
        return distinct

    @field_validator("data")
    @classmethod
    def _data_size(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_data(v)

    def to_row_values(self) -> dict[str, Any]:
        """Only the fields the caller sent, as plain column values."""
        values = self.model_dump(exclude_unset=True)
        for key in ("email", "webhook_url"):
            if values.get(key) is not None:
                values[key] = str(getattr(self, key))
        return values


class Subscriber(SubscriberBase, table=True):
    __tablename__ = "subscribers"
    tenant_id: str = Field(primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=128)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class SubscriberPublic(SubscriberBase):
    id: str
    created_at: datetime
    updated_at: datetime


# --- preferences --------------------------------------------------------------


class PreferenceBase(SQLModel):
    channels: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    categories: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    flows: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    quiet_hours: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    # Topic key -> False: never sent that topic's broadcasts.
    topics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class PreferenceUpdate(PreferenceSet):
    """Validated against the typed preference model, then stored as JSON."""


class Preference(PreferenceBase, table=True):
    __tablename__ = "preferences"
    tenant_id: str = Field(primary_key=True, max_length=64)
    subscriber_id: str = Field(primary_key=True, max_length=128)
    updated_at: datetime = _ts()


class PreferencePublic(PreferenceBase):
    subscriber_id: str
    updated_at: datetime | None = None


# --- flows --------------------------------------------------------------------


class FlowBase(SQLModel):
    event_type: str = Field(index=True, max_length=128)
    category: str = Field(default="transactional", max_length=64)
    critical: bool = False
    default_locale: str = Field(default="en", max_length=35)


EventType = Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)]
_SEND_STEPS = ("EmailStepIn", "SmsStepIn", "PushStepIn", "WebhookStepIn")


def _steps_schema(schema: dict[str, Any]) -> None:
    """What of ``check_steps`` JSON Schema can say: a send step somewhere, a digest only first.

    That a wait or a delay is followed by a send, and that "delivered" and the like follow
    one, are rules of order it cannot state (the 422 names the step).
    """
    max_items("max_flow_steps")(schema)
    choices = schema["items"]["oneOf"]

    def of(name: str) -> dict[str, Any]:  # refs are pydantic's own until FastAPI renames them
        (found,) = [c for c in choices if name in c["$ref"]]
        return found

    digest = of("DigestStepIn")
    schema["contains"] = {"oneOf": [of(n) for n in _SEND_STEPS]}
    schema["prefixItems"] = [schema["items"]]
    schema["items"] = {"oneOf": [c for c in choices if c is not digest]}


class FlowCreate(FlowBase):
    event_type: EventType
    critical: StrictBool = False
    # The column holds 64 characters; the key pattern alone would let 128 by.
    category: Annotated[str, StringConstraints(pattern=FLOW_KEY_PATTERN, max_length=64)] = (
        "transactional"
    )
    steps: Annotated[
        list[StepIn],
        PydanticField(min_length=1, json_schema_extra=_steps_schema),
        BeforeValidator(count_check("max_flow_steps", "steps")),
    ]
    throttle: ThrottleIn | None = None
    exit_on: list[EventType] = Field(default_factory=list, max_length=20)
    default_locale: Annotated[str, StringConstraints(pattern=LOCALE.pattern, max_length=35)] = "en"

    @model_validator(mode="before")
    @classmethod
    def _steps_are_known_kinds(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check_step_tags("FlowCreate", data.get("steps"))
        return data

    @model_validator(mode="after")
    def _steps_fit_together(self) -> FlowCreate:
        check_steps("FlowCreate", self.steps)
        check_flow_size(self.model_dump(mode="json"))  # a workflow input Temporal takes
        return self


class Flow(FlowBase, table=True):
    __tablename__ = "flows"
    __table_args__ = (Index("ix_flows_tenant_event", "tenant_id", "event_type"),)
    tenant_id: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=128)
    steps: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    throttle: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    exit_on: list[str] = Field(default_factory=list, sa_type=JSON)
    version: int = 1
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class FlowExit(SQLModel, table=True):
    """``exit_on`` as rows, so accepting an event finds the flows it ends with one lookup."""

    __tablename__ = "flow_exits"
    tenant_id: str = Field(primary_key=True, max_length=64)
    event_type: str = Field(primary_key=True, max_length=128)
    flow_key: str = Field(primary_key=True, max_length=128)


class FlowPublic(FlowBase):
    key: str
    steps: list[dict[str, Any]]
    throttle: dict[str, Any] | None
    exit_on: list[str]
    version: int
    created_at: datetime
    updated_at: datetime


# --- events (append-only) -------------------------------------------------------


class EventBase(SQLModel):
    type: str = Field(max_length=128)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    actor: str | None = Field(default=None, max_length=128)
    # POST /v1/events/cancel with this key stops the event's pending notifications.
    cancellation_key: str | None = Field(default=None, min_length=1, max_length=255)


class Event(EventBase, table=True):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_events_idempotency"),
        Index("ix_events_tenant_type_received", "tenant_id", "type", "received_at"),
        # The dispatcher's sweep: only the few events not yet handed to Temporal.
        Index(
            "ix_events_undispatched",
            "received_at",
            postgresql_where=text("dispatched_at IS NULL"),
            sqlite_where=text("dispatched_at IS NULL"),
        ),
    )
    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(max_length=64)
    recipients: list[str] = Field(default_factory=list, sa_type=JSON)
    idempotency_key: str | None = Field(default=None, max_length=255)
    fingerprint: str = Field(max_length=64)
    received_at: datetime = _ts()
    dispatched_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# --- notifications, deliveries, history ------------------------------------------


class Notification(SQLModel, table=True):
    __tablename__ = "notifications"
    __table_args__ = (
        # Only events that carry a key pay for this index.
        Index(
            "ix_notifications_cancellation",
            "tenant_id",
            "cancellation_key",
            postgresql_where=text("cancellation_key IS NOT NULL"),
            sqlite_where=text("cancellation_key IS NOT NULL"),
        ),
        # Throttle counts and exit_on lookups; its tenant_id prefix serves tenant scans too.
        Index("ix_notifications_subscriber_flow", "tenant_id", "subscriber_id", "flow_key"),
        # A broadcast's counts and its cancellation.
        Index(
            "ix_notifications_broadcast",
            "broadcast_id",
            postgresql_where=text("broadcast_id IS NOT NULL"),
            sqlite_where=text("broadcast_id IS NOT NULL"),
        ),
    )
    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(max_length=64)
    event_id: str = Field(foreign_key="events.id", index=True, max_length=64)
    flow_key: str = Field(max_length=128)
    subscriber_id: str = Field(max_length=128)
    workflow_id: str = Field(unique=True, max_length=512)
    # The flow as it was when the event was accepted; a re-dispatch runs exactly this.
    flow: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    replay_id: str | None = Field(default=None, max_length=64)
    cancellation_key: str | None = Field(default=None, max_length=255)
    throttle_key: str | None = Field(default=None, max_length=255)
    # Set by a cancellation, an exit_on event or the throttle; later steps are skipped.
    stopped_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    stop_reason: str | None = Field(default=None, max_length=255)
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The flow's category, for analytics rollups and one-click unsubscribe.
    category: str = Field(default="transactional", max_length=64)
    # A step waits for or is skipped by engagement: status changes are signalled to it.
    watches_engagement: bool = False
    # Set when a broadcast enrolled this recipient.
    broadcast_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts()


class DigestClaim(SQLModel, table=True):
    """Which closing digest took a notification, so a re-run of that claim (its completion
    lost to a crash) returns the same set rather than a digest of one."""

    __tablename__ = "digest_claims"
    # One claim per notification: a second digest cannot take it again.
    notification_id: str = Field(primary_key=True, max_length=64)
    # The digest run that claimed it (workflow id and run id).
    claim_id: str = Field(index=True, max_length=600)
    # Order within the claim: the first carries the digest.
    position: int = 0


class DeliveryBase(SQLModel):
    channel: str = Field(max_length=16)
    status: str = Field(default=DeliveryStatus.PENDING.value, max_length=16)
    reason: str | None = Field(default=None, max_length=2000)
    provider: str | None = Field(default=None, max_length=32)
    provider_message_id: str | None = Field(default=None, max_length=512)
    attempts: int = 0
    # When a `scheduled` delivery will run (quiet hours, a send window).
    scheduled_for: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The lifecycle after the send, each stage's first time (see core.lifecycle).
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    opened_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    clicked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    bounced_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    failed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    unsubscribed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    complained_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Delivery(DeliveryBase, table=True):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("notification_id", "step_index", name="uq_deliveries_step"),
        # Dead letters and the dashboard's top reasons: newest first within a status.
        Index("ix_deliveries_tenant_status_updated", "tenant_id", "status", "updated_at"),
        # Callbacks that carry only the provider's id (SendGrid's sg_message_id).
        Index(
            "ix_deliveries_provider_message",
            "provider_message_id",
            postgresql_where=text("provider_message_id IS NOT NULL"),
            sqlite_where=text("provider_message_id IS NOT NULL"),
        ),
    )
    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(max_length=64)
    notification_id: str = Field(foreign_key="notifications.id", index=True, max_length=64)
    step_index: int
    # Observations arrived before the send was recorded; applied when it is.
    early_events: bool = False
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Click(SQLModel):
    url: str | None
    at: datetime
    source: str


class DeliveryPublic(DeliveryBase):
    id: str
    step_index: int
    updated_at: datetime
    # Every click with its URL, oldest first (clicked_at is the first one's time).
    clicks: list[Click] = PydanticField(default_factory=list)


class DeliveryEventBase(SQLModel):
    status: str = Field(max_length=16)
    detail: str | None = Field(default=None, max_length=2000)
    # herald (the send path), sendgrid, twilio, pixel, link, app, webhook, unsubscribe
    source: str = Field(default="herald", max_length=16)
    url: str | None = Field(default=None, max_length=2048)
    # When it happened, by the reporter's clock; created_at is when Herald heard of it.
    occurred_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = _ts()


class DeliveryEvent(DeliveryEventBase, table=True):
    """Append-only status history of a delivery."""

    __tablename__ = "delivery_events"
    __table_args__ = (
        # The same provider event twice (a redelivered callback) is stored once.
        Index(
            "uq_delivery_events_external",
            "source",
            "external_id",
            unique=True,
            postgresql_where=text("external_id IS NOT NULL"),
            sqlite_where=text("external_id IS NOT NULL"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = Field(max_length=64)
    delivery_id: str = Field(foreign_key="deliveries.id", index=True, max_length=64)
    external_id: str | None = Field(default=None, max_length=255)


class DeliveryEventPublic(DeliveryEventBase):
    pass


class DeliveryDetail(DeliveryPublic):
    """One delivery with its notification and its whole timeline."""

    created_at: datetime
    notification_id: str
    event_id: str
    flow: str
    subscriber_id: str
    workflow_id: str
    timeline: list[DeliveryEventPublic]


class Opened(SQLModel):
    """An app reports that a push (or any message) was opened."""

    occurred_at: IsoDateTime | None = None


class SandboxMessage(SQLModel, table=True):
    __tablename__ = "sandbox_messages"
    __table_args__ = (Index("ix_sandbox_tenant_created", "tenant_id", "created_at"),)
    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(max_length=64)
    delivery_id: str = Field(max_length=64)
    channel: str = Field(max_length=16)
    to: list[str] = Field(default_factory=list, sa_type=JSON)
    content: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = _ts()


class SandboxMessagePublic(SQLModel):
    id: str
    delivery_id: str
    channel: str
    to: list[str]
    content: dict[str, Any]
    created_at: datetime


# --- event API shapes -------------------------------------------------------------

# POST /v1/subscribers/bulk is the bulk import: no subscriber can be reached at that path.
RESERVED_SUBSCRIBER_IDS = ("bulk",)


def not_reserved(value: str) -> str:
    if value in RESERVED_SUBSCRIBER_IDS:
        raise PydanticCustomError("reserved_id", "{id!r} is reserved", {"id": value})
    return value


SubscriberId = Annotated[
    str,
    StringConstraints(pattern=SUBSCRIBER_ID_PATTERN),
    AfterValidator(not_reserved),
    PydanticField(json_schema_extra={"not": {"enum": list(RESERVED_SUBSCRIBER_IDS)}}),
]


class InlineSubscriber(SubscriberCreate):
    """A recipient given with its fields: upserted before the event is stored."""

    id: SubscriberId


def _recipient_kind(value: Any) -> str:
    return "id" if isinstance(value, str) else "subscriber"


Recipient = Annotated[
    Annotated[SubscriberId, Tag("id")] | Annotated[InlineSubscriber, Tag("subscriber")],
    Discriminator(_recipient_kind),
]


class EventCreate(EventBase):
    type: Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)]
    to: Annotated[
        list[Recipient],
        PydanticField(min_length=1, json_schema_extra=max_items("max_recipients")),
        BeforeValidator(count_check("max_recipients", "recipients")),
    ]
    actor: str | None = PydanticField(default=None, max_length=128, pattern=NO_NUL)
    cancellation_key: str | None = PydanticField(
        default=None, min_length=1, max_length=255, pattern=NO_NUL
    )
    idempotency_key: str | None = PydanticField(
        default=None, min_length=1, max_length=255, pattern=NO_NUL
    )

    @field_validator("data")
    @classmethod
    def _data_size(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_data(v)


class NotificationRef(SQLModel):
    id: str
    flow: str
    subscriber_id: str
    workflow_id: str


class EventAccepted(SQLModel):
    id: str
    notifications: list[NotificationRef]


class NotificationPublic(NotificationRef):
    status: str
    stop_reason: str | None = None
    acknowledged_at: datetime | None = None
    deliveries: list[DeliveryPublic]


class CancelRequest(SQLModel):
    cancellation_key: str = PydanticField(min_length=1, max_length=255, pattern=NO_NUL)


class CancelResult(SQLModel):
    """Notifications stopped; steps they already ran are kept."""

    cancelled: list[str]


class Acknowledged(SQLModel):
    id: str
    acknowledged_at: datetime


class EventPublic(EventBase):
    id: str
    received_at: datetime
    dispatched_at: datetime | None
    # Failed hand-overs to Temporal (outages aside); once they reach
    # HERALD_DISPATCH_MAX_ATTEMPTS the outbox gives up and says why.
    dispatch_attempts: int = 0
    dispatch_error: str | None = None
    dispatch_given_up_at: datetime | None = None
    notifications: list[NotificationPublic]


class DeadLetterPublic(SQLModel):
    delivery_id: str
    channel: str
    status: str
    reason: str | None
    attempts: int
    provider: str | None
    updated_at: datetime
    notification_id: str
    event_id: str
    flow: str
    subscriber_id: str
    workflow_id: str


class RetryFilter(SQLModel):
    channel: Channel | None = None
    flow: Text | None = None
    since: IsoDateTime | None = None
    limit: JsonInt = PydanticField(default=500, ge=1, le=5000)


class RetryAccepted(SQLModel):
    notifications: list[str]


class ReplayCreate(SQLModel):
    """Replay stored events; give ``replay_id`` to make repeating the call a no-op."""

    flow: Text | None = PydanticField(default=None, description="Only this flow (e.g. a new one)")
    replay_id: Annotated[str, StringConstraints(pattern=FLOW_KEY_PATTERN, max_length=64)] | None = (
        None  # notifications.replay_id holds 64 characters
    )
    dry_run: StrictBool = False


class ReplayQuery(ReplayCreate):
    type: Text | None = None
    since: IsoDateTime | None = None
    until: IsoDateTime | None = None
    limit: Annotated[
        Annotated[int, PydanticField(ge=1), JSON_NUMBER] | None,
        AfterValidator(at_most("max_replay_events")),
    ] = PydanticField(
        default=None,
        json_schema_extra=maximum("max_replay_events"),
        description="Events to go through: 1,000 unless given, at most "
        "HERALD_MAX_REPLAY_EVENTS (10,000)",
    )


class ReplayItem(SQLModel):
    event_id: str
    flow: str
    subscriber_id: str
    workflow_id: str
    already_replayed: bool


class ReplayResult(SQLModel):
    replay_id: str
    dry_run: bool
    started: int
    items: list[ReplayItem]
