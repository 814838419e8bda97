"""One settings class for the API and the worker, read from ``HERALD_*`` variables."""

from __future__ import annotations

import base64
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.access_settings import AccessSettings
from core.deployment import DeploymentSettings
from core.limits import LimitSettings
from core.retention import RetentionSettings
from core.retry import RetrySpec
from core.types import Channel
from core.webhook_settings import WebhookSettings

# Each channel's providers in default priority order; "sandbox" stands in for none.
KNOWN_PROVIDERS: dict[Channel, tuple[str, ...]] = {
    Channel.EMAIL: ("sendgrid", "smtp"),
    Channel.SMS: ("twilio",),
    Channel.PUSH: ("fcm",),
    Channel.WEBHOOK: ("webhook",),
}
SANDBOX = "sandbox"

# A fixed dev secret keeps signatures reproducible locally; production refuses it.
DEV_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"herald-dev-webhook-secret-0001").decode()
DEV_TRACKING_SECRET = "herald-dev-tracking-secret-0001"

# Broker URL schemes the consumer (python -m ingest) speaks; Kafka is not supported yet.
BrokerKind = Literal["rabbit", "nats"]
BROKER_SCHEMES: dict[str, BrokerKind] = {
    "amqp": "rabbit",
    "amqps": "rabbit",
    "nats": "nats",
    "tls": "nats",
}
# A tenant is the first word of a routing key (RabbitMQ) or a subject token (NATS).
_BROKER_NAME_FORBIDDEN = set(".*#> \t")


class Settings(
    AccessSettings,
    RetentionSettings,
    DeploymentSettings,
    LimitSettings,
    WebhookSettings,
    BaseSettings,
):
    model_config = SettingsConfigDict(env_prefix="HERALD_", env_file=None, extra="ignore")

    env: Literal["dev", "test", "production"] = "dev"
    data_dir: Path = Path(".herald")
    database_url: str = "sqlite:///.herald/herald.db"

    temporal_address: str | None = None
    temporal_namespace: str = "default"
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    task_queue_prefix: str = "herald"
    temporal_connect_timeout_seconds: float = Field(default=5.0, gt=0)

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # The externally reachable base URL for tracking links and provider callbacks.
    public_url: str | None = None
    # Where the dashboard links a workflow (the Temporal Web UI).
    temporal_ui_url: str | None = None
    # "key1:tenantA,key2:tenantB"
    api_keys: SecretStr = SecretStr("")

    email_from: str = "Herald <notifications@herald.local>"
    sendgrid_api_key: SecretStr | None = None
    sendgrid_base_url: str = "https://api.sendgrid.com"
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from_number: str | None = None
    twilio_base_url: str = "https://api.twilio.com"
    fcm_credentials_file: Path | None = None
    fcm_base_url: str = "https://fcm.googleapis.com"
    # smtp://user:pass@host:587?starttls=true or smtps://user:pass@host:465
    smtp_url: SecretStr | None = None
    # Priority order per channel, e.g. HERALD_PROVIDERS='{"email": ["sendgrid", "smtp"]}';
    # unset channels use every configured provider in KNOWN_PROVIDERS order.
    providers: dict[Channel, list[str]] = Field(default_factory=dict)
    webhook_secret: SecretStr = SecretStr(DEV_WEBHOOK_SECRET)
    # The base64 public key SendGrid shows for its signed Event Webhook; unset refuses events.
    sendgrid_webhook_public_key: str | None = None
    # Open pixel, click links and one-click unsubscribe in emails (a flow step may opt out).
    tracking: bool = True
    # Signs tracking, click and unsubscribe links; shared by the API and the worker.
    tracking_secret: SecretStr = SecretStr(DEV_TRACKING_SECRET)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)

    # Per-channel retry defaults, e.g. HERALD_RETRY_SMS='{"maximum_attempts": 5}'.
    retry_email: RetrySpec = RetrySpec(maximum_interval=timedelta(minutes=5), maximum_attempts=10)
    retry_sms: RetrySpec = RetrySpec(
        maximum_interval=timedelta(minutes=2),
        maximum_attempts=8,
        schedule_to_close=timedelta(minutes=30),
    )
    retry_push: RetrySpec = RetrySpec(
        maximum_interval=timedelta(minutes=2),
        maximum_attempts=8,
        schedule_to_close=timedelta(minutes=30),
    )
    retry_webhook: RetrySpec = RetrySpec(
        initial_interval=timedelta(seconds=2),
        maximum_interval=timedelta(minutes=10),
        maximum_attempts=12,
        schedule_to_close=timedelta(hours=2),
    )
    # How long a notification with failed deliveries stays open for a `retry` signal.
    dead_letter_retention: timedelta = Field(default=timedelta(days=7), ge=timedelta(0))
    # Sends per second per channel, across every worker process (task-queue wide).
    rate_limit_email: float | None = Field(default=None, gt=0)
    rate_limit_sms: float | None = Field(default=None, gt=0)
    rate_limit_push: float | None = Field(default=None, gt=0)
    rate_limit_webhook: float | None = Field(default=None, gt=0)

    worker_max_concurrent_activities: int = Field(default=64, ge=1)
    # Freeze the startup heap out of the collector's full passes (core.heap); off in tests,
    # which build many apps in one process.
    gc_freeze: bool = True
    # Workflows in the SDK's sandbox, which imports their module afresh for every execution
    # and fails a workflow task on a non-deterministic call (datetime.now, random, I/O).
    # Unset: on in dev and test (make run, the suite), off in production, where it cost ~3 ms
    # of worker CPU per notification (BENCHMARKS.md). The replay tests run it either way.
    workflow_sandbox: bool | None = None
    # Prometheus metrics of a worker process (the API serves its own at /metrics).
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # OTLP/HTTP collector base URL (e.g. http://127.0.0.1:4318); unset: no traces, no cost.
    otel_endpoint: str | None = None
    # "json" for one JSON object per line with tenant, event, delivery and trace ids.
    log_format: Literal["text", "json"] = "text"
    # Audience members a broadcast enrolls per batch (one transaction, one cursor commit).
    broadcast_batch_size: int = Field(default=200, ge=1, le=1000)
    # Batches of one broadcast sent at once, so several channel workers share it.
    broadcast_batches_in_flight: int = Field(default=2, ge=1, le=8)
    # How often the API re-dispatches events a crash or an outage left behind; 0 turns it off.
    dispatch_sweep_seconds: float = Field(default=5.0, ge=0)
    # Under a burst (this many POST /v1/events in flight; 0: never) the API's workflow starts
    # wait, at most dispatch_max_hold_seconds, so accepts keep the CPU (dispatching/give_way.py).
    # At most 10 s: the sweep's grace, after which a held event would be queued twice.
    dispatch_give_way_at: int = Field(default=8, ge=0)
    dispatch_max_hold_seconds: float = Field(default=5.0, ge=0, le=10)

    # Event ingestion from a broker (``python -m ingest``): amqp://… (RabbitMQ) or nats://…
    # (NATS JetStream); unset turns it off.
    broker_url: SecretStr | None = None
    # The tenants whose events the consumer takes, e.g. HERALD_BROKER_TENANTS=acme,globex.
    broker_tenants: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Unacknowledged messages a consumer process holds per tenant: bounds its memory.
    broker_prefetch: int = Field(default=64, ge=1, le=10_000)
    # First word of every broker name: exchange <prefix>.events, queue <prefix>.events.dead.
    broker_prefix: str = Field(default="herald", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # The status stream (exchange <prefix>.status) has one publisher at a time; another
    # consumer process takes over this long after it stopped renewing its lease.
    status_lease_seconds: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("webhook_secret")
    @classmethod
    def _secret_shape(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if not raw.startswith("whsec_"):
            raise ValueError("must have the form whsec_<base64>")
        try:
            base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        except ValueError as exc:
            raise ValueError("the part after whsec_ must be base64") from exc
        return v

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None
        scheme = urlsplit(v.get_secret_value()).scheme
        if scheme.startswith("kafka"):
            raise ValueError("Kafka is not supported yet; use amqp:// (RabbitMQ) or nats://")
        if scheme not in BROKER_SCHEMES:
            raise ValueError(f"expected one of {', '.join(s + '://' for s in BROKER_SCHEMES)}")
        return v

    @field_validator("broker_tenants", mode="before")
    @classmethod
    def _split_tenants(cls, v: object) -> object:
        """Comma-separated in the environment; a list when set in code."""
        items = v.split(",") if isinstance(v, str) else v
        if not isinstance(items, list):
            return v
        names = list(dict.fromkeys(str(t).strip() for t in items if str(t).strip()))
        bad = [t for t in names if _BROKER_NAME_FORBIDDEN & set(t) or len(t) > 64]
        if bad:
            raise ValueError(f"broker tenant names may not contain . * # > or spaces: {bad}")
        return names

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, v: dict[Channel, list[str]]) -> dict[Channel, list[str]]:
        for channel, names in v.items():
            allowed = (*KNOWN_PROVIDERS[channel], SANDBOX)
            unknown = [n for n in names if n not in allowed]
            if unknown or not names or len(set(names)) != len(names):
                raise ValueError(
                    f"{channel.value}: expected distinct names from {', '.join(allowed)}, "
                    f"got {names}"
                )
        return v

    @model_validator(mode="after")
    def _listed_providers_are_configured(self) -> Settings:
        for channel, names in self.providers.items():
            missing = [n for n in names if not self.provider_configured(n)]
            if missing:
                raise ValueError(
                    f"HERALD_PROVIDERS lists {', '.join(missing)} for {channel.value} "
                    "without its credentials"
                )
        return self

    @model_validator(mode="after")
    def _refuse_dev_defaults_in_production(self) -> Settings:
        if self.env != "production":
            return self
        if self.webhook_secret.get_secret_value() == DEV_WEBHOOK_SECRET:
            raise ValueError("HERALD_WEBHOOK_SECRET must be set in production")
        if self.tracking_secret.get_secret_value() == DEV_TRACKING_SECRET:
            raise ValueError("HERALD_TRACKING_SECRET must be set in production")
        if not (self.public_url or "").startswith("https://"):
            # Mailbox providers require an https one-click unsubscribe link (RFC 8058).
            raise ValueError("HERALD_PUBLIC_URL must be set to an https:// URL in production")
        return self

    def api_key_map(self) -> dict[str, str]:
        """Parse ``key:tenant`` pairs; a malformed pair is an error, not a silent skip."""
        pairs: dict[str, str] = {}
        for item in self.api_keys.get_secret_value().split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, tenant = item.partition(":")
            if not sep or not key or not tenant:
                raise ValueError("HERALD_API_KEYS entries must look like key:tenant")
            pairs[key] = tenant
        return pairs

    def provider_configured(self, name: str) -> bool:
        """Whether ``name`` has the credentials it needs (webhooks and the sandbox need none)."""
        if name == "sendgrid":
            return bool(self.sendgrid_api_key and self.sendgrid_api_key.get_secret_value())
        if name == "smtp":
            return bool(self.smtp_url and self.smtp_url.get_secret_value())
        if name == "twilio":
            return bool(
                self.twilio_account_sid
                and self.twilio_auth_token
                and self.twilio_auth_token.get_secret_value()
                and self.twilio_from_number
            )
        if name == "fcm":
            return self.fcm_credentials_file is not None
        return name in ("webhook", SANDBOX)

    def providers_for(self, channel: Channel) -> list[str]:
        """The channel's providers in failover order; the sandbox when none is configured."""
        names = self.providers.get(channel) or [
            n for n in KNOWN_PROVIDERS[channel] if self.provider_configured(n)
        ]
        return names or [SANDBOX]

    @property
    def broker_kind(self) -> BrokerKind | None:
        """Which broker ``broker_url`` names; None when ingestion is off."""
        if self.broker_url is None:
            return None
        return BROKER_SCHEMES[urlsplit(self.broker_url.get_secret_value()).scheme]

    @property
    def broker_address(self) -> str | None:
        """``broker_url`` without its password, for logs and banners."""
        if self.broker_url is None:
            return None
        parts = urlsplit(self.broker_url.get_secret_value())
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return parts._replace(netloc=netloc).geturl()

    @property
    def base_url(self) -> str:
        """``HERALD_PUBLIC_URL``, or the API's own address, with no trailing slash."""
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def temporal_ui_base(self) -> str:
        return (self.temporal_ui_url or f"http://127.0.0.1:{self.temporal_ui_port}").rstrip("/")

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def sandboxed_workflows(self) -> bool:
        if self.workflow_sandbox is not None:
            return self.workflow_sandbox
        return self.env != "production"

    @property
    def workflow_task_queue(self) -> str:
        return f"{self.task_queue_prefix}-workflows"

    def channel_task_queue(self, channel: Channel) -> str:
        return f"{self.task_queue_prefix}-{channel.value}"

    def retry_for(self, channel: Channel) -> RetrySpec:
        spec: RetrySpec = getattr(self, f"retry_{channel.value}")
        return spec

    def rate_limit_for(self, channel: Channel) -> float | None:
        limit: float | None = getattr(self, f"rate_limit_{channel.value}")
        return limit


@lru_cache
def get_settings() -> Settings:
    return Settings()
