"""Settings for running Herald for real: the sandbox switch and Temporal's secured connection.

A mixin of ``core.settings.Settings`` (so every field reads ``HERALD_<NAME>``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, FilePath, SecretStr, field_validator, model_validator

from core.types import Channel

if TYPE_CHECKING:
    from core.settings import Settings

# The settings each provider needs, as HERALD_ variables, by Settings attribute.
PROVIDER_SETTINGS: dict[str, tuple[str, ...]] = {
    "sendgrid": ("sendgrid_api_key",),
    "smtp": ("smtp_url",),
    "twilio": ("twilio_account_sid", "twilio_auth_token", "twilio_from_number"),
    "fcm": ("fcm_credentials_file",),
}


class DeploymentSettings(BaseModel):
    # Production refuses channels that would fall back to the sandbox; true allows them
    # (and keeps /v1/sandbox on), e.g. for a staging deployment.
    sandbox: bool = False
    # TLS to Temporal with the system's roots; implied by any setting below.
    temporal_tls: bool = False
    # mTLS: the client certificate and its private key (PEM files), set together.
    temporal_tls_cert: FilePath | None = None
    temporal_tls_key: FilePath | None = None
    # The CA that signed the server's certificate (PEM), when not a system root.
    temporal_tls_ca: FilePath | None = None
    # The name the server's certificate is checked against, when not the address's host.
    temporal_tls_server_name: str | None = None
    # Temporal Cloud API key, sent as a bearer token (always over TLS).
    temporal_api_key: SecretStr | None = None

    @field_validator(
        "temporal_tls_cert",
        "temporal_tls_key",
        "temporal_tls_ca",
        "temporal_tls_server_name",
        "temporal_api_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        """An empty variable (a compose pass-through of an unset one) means unset."""
        return None if v == "" else v

    @model_validator(mode="after")
    def _client_cert_needs_its_key(self) -> DeploymentSettings:
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            raise ValueError(
                "HERALD_TEMPORAL_TLS_CERT and HERALD_TEMPORAL_TLS_KEY must be set together "
                "(the client certificate and its private key)"
            )
        return self

    @model_validator(mode="after")
    def _no_sandbox_in_production(self) -> DeploymentSettings:
        if getattr(self, "env", None) != "production" or self.sandbox:
            return self
        if problems := sandboxed_channels(cast("Settings", self)):
            raise ValueError(
                "in production every channel needs a provider, or its messages are only "
                f"recorded in the sandbox: {'; '.join(problems)} "
                "(or set HERALD_SANDBOX=true to allow the sandbox)"
            )
        return self

    @property
    def temporal_uses_tls(self) -> bool:
        """An API key implies TLS, as Temporal Cloud requires; so does any TLS file."""
        return self.temporal_tls or any(
            v is not None
            for v in (
                self.temporal_tls_cert,
                self.temporal_tls_ca,
                self.temporal_tls_server_name,
                self.temporal_api_key,
            )
        )


def sandbox_allowed(settings: Settings) -> bool:
    """Whether the sandbox (and /v1/sandbox) may be used: everywhere but in production."""
    return settings.env != "production" or settings.sandbox


def sandboxed_channels(settings: Settings) -> list[str]:
    """Each channel that would use the sandbox, saying which settings would give it a provider.

    The webhook channel needs no credentials, so it never falls back to the sandbox.
    """
    from core.settings import KNOWN_PROVIDERS, SANDBOX

    problems = []
    for channel in Channel:
        if SANDBOX not in settings.providers_for(channel):
            continue
        if SANDBOX in settings.providers.get(channel, ()):
            problems.append(f"{channel.value}: HERALD_PROVIDERS lists the sandbox")
            continue
        options = []
        for provider in KNOWN_PROVIDERS[channel]:
            missing = [
                f"HERALD_{name.upper()}"
                for name in PROVIDER_SETTINGS.get(provider, ())
                if not _is_set(getattr(settings, name))
            ]
            options.append(_all_of(missing))
        problems.append(f"{channel.value}: set {' or '.join(o for o in options if o)}")
    return problems


def _all_of(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def _is_set(value: Any) -> bool:
    if isinstance(value, SecretStr):
        return bool(value.get_secret_value())
    if isinstance(value, Path):
        return True
    return bool(value)
