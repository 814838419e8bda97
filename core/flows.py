"""Flow definitions.

Two layers: the step *shapes* travel in workflow inputs and are decoded inside
the workflow sandbox, so they must stay pure data; the *authoring* subclasses
add template compilation, which runs once when the API accepts a flow.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.retry import RetryOverride
from core.templates import check_template, check_tree
from core.types import Channel

FLOW_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
EVENT_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retry: RetryOverride | None = Field(
        default=None, description="Overrides the channel's default retry policy"
    )


class EmailStep(_Step):
    channel: Literal[Channel.EMAIL] = Channel.EMAIL
    subject: str = Field(min_length=1)
    text: str = Field(min_length=1)
    html: str | None = None


class SmsStep(_Step):
    channel: Literal[Channel.SMS] = Channel.SMS
    text: str = Field(min_length=1)


class PushStep(_Step):
    channel: Literal[Channel.PUSH] = Channel.PUSH
    title: str = Field(min_length=1)
    body: str = Field(min_length=1)
    data: dict[str, str] = Field(default_factory=dict)


class WebhookStep(_Step):
    channel: Literal[Channel.WEBHOOK] = Channel.WEBHOOK
    url: str | None = Field(default=None, description="Defaults to the subscriber's webhook_url")
    payload: dict[str, Any] | None = Field(
        default=None, description="Defaults to the event envelope; strings are templates"
    )


Step = Annotated[EmailStep | SmsStep | PushStep | WebhookStep, Field(discriminator="channel")]


class FlowDefinition(BaseModel):
    """The part of a flow a workflow needs; frozen into its input so edits never break it."""

    key: str
    event_type: str
    category: str = "transactional"
    critical: bool = False
    steps: list[Step]
    version: int = 1


# --- authoring: the same shapes, plus templates compiled at save time --------------


class EmailStepIn(EmailStep):
    @field_validator("subject", "text")
    @classmethod
    def _compile(cls, v: str) -> str:
        return check_template(v)

    @field_validator("html")
    @classmethod
    def _compile_html(cls, v: str | None) -> str | None:
        return None if v is None else check_template(v, html=True)


class SmsStepIn(SmsStep):
    @field_validator("text")
    @classmethod
    def _compile(cls, v: str) -> str:
        return check_template(v)


class PushStepIn(PushStep):
    @field_validator("title", "body")
    @classmethod
    def _compile(cls, v: str) -> str:
        return check_template(v)

    @field_validator("data")
    @classmethod
    def _compile_data(cls, v: dict[str, str]) -> dict[str, str]:
        return check_tree(v)


class WebhookStepIn(WebhookStep):
    @field_validator("url")
    @classmethod
    def _compile_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if "{{" not in v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL or a template")
        return check_template(v)

    @field_validator("payload")
    @classmethod
    def _compile_payload(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else check_tree(v)


StepIn = Annotated[
    EmailStepIn | SmsStepIn | PushStepIn | WebhookStepIn, Field(discriminator="channel")
]
