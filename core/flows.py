"""Flow definitions.

Two layers: the step *shapes* travel in workflow inputs and are decoded inside
the workflow sandbox, so they must stay pure data; the *authoring* subclasses
add template compilation, which runs once when the API accepts a flow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.json_types import JsonInt
from core.preferences import HHMM
from core.retry import Duration, RetryOverride
from core.templates import TemplateError, check_template, check_tree
from core.types import Channel

FLOW_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
EVENT_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
LOCALE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$"
# What a webhook step's url may be: an http(s) URL, or a template rendering one.
WEBHOOK_URL_PATTERN = r"^https?://|\{\{"
Locale = Annotated[str, Field(pattern=LOCALE_PATTERN)]
ACKNOWLEDGED = "acknowledged"
# What `wait until` and `unless` may name: an acknowledgement, or engagement with an
# earlier send of the same notification (an open implies delivery, a click an open).
Condition = Literal["acknowledged", "delivered", "opened", "clicked"]


class _Pure(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A dict keyed by locale refuses any other key: the document says so beside the pattern.
_LOCALE_KEYS_ONLY: dict[str, Any] = {"additionalProperties": False}


def _channel_required(schema: dict[str, Any]) -> None:
    """A send step is told apart by its channel: the API refuses one without it."""
    schema["required"] = ["channel", *(f for f in schema.get("required", []) if f != "channel")]


def _exactly_one(*names: str) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra``: exactly one of ``names`` is given (and not null)."""

    def extra(schema: dict[str, Any]) -> None:
        schema["oneOf"] = [
            {"required": [n], "properties": {n: {"not": {"type": "null"}}}} for n in names
        ]

    return extra


class _Step(_Pure):
    type: Literal["send"] = Field(default="send", description="Optional for send steps")
    retry: RetryOverride | None = Field(
        default=None, description="Overrides the channel's default retry policy"
    )
    unless: Condition | None = Field(
        default=None,
        description="Skip this send if the notification was acknowledged, or if an earlier "
        "send of it was delivered, opened or clicked",
    )


class EmailLocale(_Pure):
    subject: str | None = Field(default=None, min_length=1)
    text: str | None = Field(default=None, min_length=1)
    html: str | None = None


class SmsLocale(_Pure):
    text: str = Field(min_length=1)


class PushLocale(_Pure):
    title: str | None = Field(default=None, min_length=1)
    body: str | None = Field(default=None, min_length=1)


class EmailStep(_Step):
    channel: Literal[Channel.EMAIL] = Channel.EMAIL
    subject: str = Field(min_length=1)
    text: str = Field(min_length=1)
    html: str | None = None
    locales: dict[Locale, EmailLocale] = Field(
        default_factory=dict,
        description="Per-locale overrides of subject, text and html",
        json_schema_extra=_LOCALE_KEYS_ONLY,
    )
    track: StrictBool = Field(
        default=True, description="Open pixel and click tracking (when enabled globally)"
    )


class SmsStep(_Step):
    channel: Literal[Channel.SMS] = Channel.SMS
    text: str = Field(min_length=1)
    locales: dict[Locale, SmsLocale] = Field(
        default_factory=dict, json_schema_extra=_LOCALE_KEYS_ONLY
    )
    track_links: StrictBool = Field(
        default=False, description="Rewrite links to short tracked links"
    )


class PushStep(_Step):
    channel: Literal[Channel.PUSH] = Channel.PUSH
    title: str = Field(min_length=1)
    body: str = Field(min_length=1)
    data: dict[str, str] = Field(default_factory=dict)
    locales: dict[Locale, PushLocale] = Field(
        default_factory=dict, json_schema_extra=_LOCALE_KEYS_ONLY
    )


class WebhookStep(_Step):
    channel: Literal[Channel.WEBHOOK] = Channel.WEBHOOK
    url: str | None = Field(default=None, description="Defaults to the subscriber's webhook_url")
    payload: dict[str, Any] | None = Field(
        default=None, description="Defaults to the event envelope; strings are templates"
    )


SendStep = EmailStep | SmsStep | PushStep | WebhookStep
# What the deliver activity takes: one send step, told apart by its channel.
AnySendStep = Annotated[SendStep, Field(discriminator="channel")]


class DelayStep(_Pure):
    """Pause for a duration, until a timestamp from the event, or until a local clock time."""

    type: Literal["delay"]
    duration: Duration | None = Field(default=None, description="ISO 8601, e.g. PT10M, P2D, P1W")
    until: str | None = Field(
        default=None, description="A template giving an ISO 8601 timestamp, e.g. {{ data.at }}"
    )
    until_local: str | None = Field(
        default=None,
        pattern=HHMM,
        description="The next HH:MM in the subscriber's timezone (a send window)",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DelayStep:
        given = [n for n in ("duration", "until", "until_local") if getattr(self, n) is not None]
        if len(given) != 1:
            raise PydanticCustomError(
                "delay_target", "a delay needs exactly one of duration, until or until_local"
            )
        return self


class WaitStep(_Pure):
    """Wait out ``duration``, or less if the condition is met first."""

    type: Literal["wait"]
    duration: Duration
    until: Condition = "acknowledged"


class DigestStep(_Pure):
    """Fold every event of the flow for one subscriber (and key) within ``window`` into one."""

    type: Literal["digest"]
    window: Duration
    key: str | None = Field(default=None, description="A template, e.g. {{ data.thread_id }}")
    max_items: JsonInt = Field(default=100, ge=1, le=1000, description="Closes the window early")


ControlStep = DelayStep | WaitStep | DigestStep
SEND_TAGS = tuple(c.value for c in Channel)
STEP_TAGS = (*SEND_TAGS, "delay", "wait", "digest")


def step_tag(value: Any) -> str | None:
    """Control steps are told apart by ``type``; send steps by ``channel``."""
    if isinstance(value, dict):
        kind, channel = value.get("type"), value.get("channel")
    else:
        kind, channel = getattr(value, "type", None), getattr(value, "channel", None)
    if kind in (None, "send"):
        return None if channel is None else str(getattr(channel, "value", channel))
    return str(kind)


_UNKNOWN_STEP = {
    "custom_error_type": "unknown_step_type",
    "custom_error_message": (
        "unknown step type: expected a send step with channel "
        f"{', '.join(SEND_TAGS)}, or type delay, wait or digest"
    ),
}

Step = Annotated[
    Annotated[EmailStep, Tag("email")]
    | Annotated[SmsStep, Tag("sms")]
    | Annotated[PushStep, Tag("push")]
    | Annotated[WebhookStep, Tag("webhook")]
    | Annotated[DelayStep, Tag("delay")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[DigestStep, Tag("digest")],
    Discriminator(step_tag, **_UNKNOWN_STEP),
]


class Throttle(_Pure):
    """At most ``limit`` notifications of the flow per subscriber (and key) per ``period``."""

    limit: JsonInt = Field(ge=1, le=100_000)
    period: Duration
    key: str | None = Field(default=None, description="A template, e.g. {{ data.project_id }}")


class FlowDefinition(BaseModel):
    """The part of a flow a workflow needs; frozen into its input so edits never break it."""

    key: str
    event_type: str
    category: str = "transactional"
    critical: bool = False
    steps: list[Step]
    version: int = 1
    throttle: Throttle | None = None
    exit_on: list[str] = Field(default_factory=list)
    default_locale: str = "en"

    @property
    def digest(self) -> DigestStep | None:
        first = self.steps[0] if self.steps else None
        return first if isinstance(first, DigestStep) else None


def is_send(step: Step) -> bool:
    return isinstance(step, SendStep)


def step_problems(steps: list[Any]) -> list[tuple[int, str, str, str]]:
    """Rules across steps, as (index, field, error type, message) for a 422."""
    problems: list[tuple[int, str, str, str]] = []
    sends = [isinstance(s, SendStep) for s in steps]
    if not any(sends):
        problems.append((0, "channel", "no_send_step", "a flow needs at least one send step"))
    for i, step in enumerate(steps):
        if isinstance(step, WaitStep) and not any(sends[i + 1 :]):
            problems.append(
                (i, "type", "wait_without_send", "a wait must be followed by a send step")
            )
        if isinstance(step, DigestStep) and i != 0:
            problems.append((i, "type", "digest_not_first", "a digest must be the first step"))
        if isinstance(step, DelayStep) and not any(sends[i + 1 :]):
            problems.append(
                (i, "type", "delay_without_send", "a delay must be followed by a send step")
            )
        field, condition = _condition(step)
        if condition not in (None, ACKNOWLEDGED) and not any(sends[:i]):
            problems.append(
                (
                    i,
                    field,
                    "engagement_without_send",
                    f"{condition!r} refers to an earlier send step, and there is none",
                )
            )
    return problems


def _condition(step: Any) -> tuple[str, str | None]:
    if isinstance(step, WaitStep):
        return "until", step.until
    return "unless", getattr(step, "unless", None)


def watches_engagement(steps: list[dict[str, Any]]) -> bool:
    """Whether a stored flow's steps wait for, or are skipped by, engagement."""
    for step in steps:
        wanted = step.get("until") if step.get("type") == "wait" else step.get("unless")
        if wanted not in (None, ACKNOWLEDGED):
            return True
    return False


def check_step_tags(title: str, steps: Any) -> None:
    """Name the field for a step of unknown kind: ``type``, or ``channel`` for a send step."""
    if not isinstance(steps, list):
        return
    errors = []
    for i, raw in enumerate(steps):
        if not isinstance(raw, dict) or step_tag(raw) in STEP_TAGS:
            continue
        field = "channel" if raw.get("type") in (None, "send") else "type"
        errors.append(
            InitErrorDetails(
                type=PydanticCustomError(
                    "unknown_step_type", str(_UNKNOWN_STEP["custom_error_message"])
                ),
                loc=("steps", i, field),
                input=raw.get(field),
            )
        )
    if errors:
        raise ValidationError.from_exception_data(title, errors)


def check_steps(title: str, steps: list[Any]) -> None:
    """Raise one ValidationError locating each cross-step problem at ``steps[i].field``."""
    problems = step_problems(steps)
    if problems:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(
                    type=PydanticCustomError(kind, message),
                    loc=("steps", i, field),
                    input=steps[i] if steps else None,
                )
                for i, field, kind, message in problems
            ],
        )


# --- authoring: the same shapes, plus templates compiled at save time --------------


def _refused(problem: str) -> PydanticCustomError:
    """A template Jinja cannot compile (or too large): the 422's type says so."""
    return PydanticCustomError("template", "{problem}", {"problem": problem})


def _template(source: str, *, html: bool = False) -> str:
    try:
        return check_template(source, html=html)
    except TemplateError as exc:
        raise _refused(str(exc)) from exc


def _tree(value: Any) -> Any:
    try:
        return check_tree(value)
    except TemplateError as exc:
        raise _refused(str(exc)) from exc


def _check_locales(locales: dict[str, Any]) -> None:
    for tag, variant in locales.items():
        for name, source in variant:
            if isinstance(source, str):
                try:
                    check_template(source, html=name == "html")
                except TemplateError as exc:
                    raise _refused(f"locale {tag!r}, {name}: {exc}") from exc


class EmailStepIn(EmailStep):
    model_config = ConfigDict(json_schema_extra=_channel_required)

    @field_validator("subject", "text")
    @classmethod
    def _compile(cls, v: str) -> str:
        return _template(v)

    @field_validator("locales")
    @classmethod
    def _compile_locales(cls, v: dict[str, EmailLocale]) -> dict[str, EmailLocale]:
        _check_locales(v)
        return v

    @field_validator("html")
    @classmethod
    def _compile_html(cls, v: str | None) -> str | None:
        return None if v is None else _template(v, html=True)


class SmsStepIn(SmsStep):
    model_config = ConfigDict(json_schema_extra=_channel_required)

    @field_validator("text")
    @classmethod
    def _compile(cls, v: str) -> str:
        return _template(v)

    @field_validator("locales")
    @classmethod
    def _compile_locales(cls, v: dict[str, SmsLocale]) -> dict[str, SmsLocale]:
        _check_locales(v)
        return v


class PushStepIn(PushStep):
    model_config = ConfigDict(json_schema_extra=_channel_required)

    @field_validator("title", "body")
    @classmethod
    def _compile(cls, v: str) -> str:
        return _template(v)

    @field_validator("data")
    @classmethod
    def _compile_data(cls, v: dict[str, str]) -> dict[str, str]:
        return _tree(v)

    @field_validator("locales")
    @classmethod
    def _compile_locales(cls, v: dict[str, PushLocale]) -> dict[str, PushLocale]:
        _check_locales(v)
        return v


class WebhookStepIn(WebhookStep):
    model_config = ConfigDict(json_schema_extra=_channel_required)

    url: str | None = Field(
        default=None,
        description="Defaults to the subscriber's webhook_url; an http(s) URL or a template",
        json_schema_extra={"pattern": WEBHOOK_URL_PATTERN},
    )

    @field_validator("url")
    @classmethod
    def _compile_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if "{{" not in v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL or a template")
        return _template(v)

    @field_validator("payload")
    @classmethod
    def _compile_payload(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else _tree(v)


class DelayStepIn(DelayStep):
    model_config = ConfigDict(json_schema_extra=_exactly_one("duration", "until", "until_local"))

    @field_validator("until")
    @classmethod
    def _compile(cls, v: str | None) -> str | None:
        return None if v is None else _template(v)


class DigestStepIn(DigestStep):
    @field_validator("key")
    @classmethod
    def _compile(cls, v: str | None) -> str | None:
        return None if v is None else _template(v)


class ThrottleIn(Throttle):
    @field_validator("key")
    @classmethod
    def _compile(cls, v: str | None) -> str | None:
        return None if v is None else _template(v)


StepIn = Annotated[
    Annotated[EmailStepIn, Tag("email")]
    | Annotated[SmsStepIn, Tag("sms")]
    | Annotated[PushStepIn, Tag("push")]
    | Annotated[WebhookStepIn, Tag("webhook")]
    | Annotated[DelayStepIn, Tag("delay")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[DigestStepIn, Tag("digest")],
    Discriminator(step_tag, **_UNKNOWN_STEP),
]
