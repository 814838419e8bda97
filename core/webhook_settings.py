"""Settings of outgoing webhooks: where they may go, secret rotation, per-tenant fairness."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from core.netguard import AddressPolicy, IPNetwork, parse_networks

if TYPE_CHECKING:
    from core.settings import Settings

# The tenant `make run` creates; HERALD_WEBHOOK_SECRET is its first signing secret.
DEFAULT_TENANT = "default"


class WebhookSettings(BaseModel):
    """Mixed into ``core.settings.Settings``; every field is read from ``HERALD_<NAME>``."""

    # Networks a webhook may reach although they are not public (loopback, private,
    # link-local...), comma-separated CIDRs: HERALD_WEBHOOK_ALLOWED_NETWORKS=10.8.0.0/16.
    webhook_allowed_networks: Annotated[tuple[IPNetwork, ...], NoDecode] = ()
    # After a rotation, deliveries carry the old signature beside the new one this long.
    webhook_secret_grace: timedelta = Field(default=timedelta(hours=24), ge=timedelta(0))
    # Webhook sends of one tenant in flight at once per worker process, so a slow receiver
    # cannot hold every slot; unset: a quarter of HERALD_WORKER_MAX_CONCURRENT_ACTIVITIES.
    webhook_tenant_concurrency: int | None = Field(default=None, ge=1)

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _networks(cls, v: object) -> object:
        """Comma-separated (or a JSON list) in the environment; a list when set in code."""
        if isinstance(v, str):
            text = v.strip()
            items = json.loads(text) if text.startswith("[") else text.split(",")
        else:
            items = v
        if not isinstance(items, list | tuple):
            return v
        return parse_networks(str(item) for item in items)

    @property
    def webhook_policy(self) -> AddressPolicy:
        return AddressPolicy(self.webhook_allowed_networks)


def starts_with_shared_secret(settings: Settings, tenant: str) -> bool:
    """Whether ``tenant``'s first signing secret is HERALD_WEBHOOK_SECRET: true of `default`,
    and of the tenant HERALD_API_KEYS names when it names only one (so upgrading a
    single-tenant Herald keeps its receivers working).

    Every other tenant gets a random secret of its own: tenants sharing one would let each
    other's receivers forge deliveries.
    """
    return tenant == DEFAULT_TENANT or set(settings.api_key_map().values()) == {tenant}


def first_secret_tenants(settings: Settings) -> list[str]:
    """The tenants HERALD_API_KEYS lists that start with HERALD_WEBHOOK_SECRET."""
    listed = sorted(set(settings.api_key_map().values()))
    return [t for t in listed if starts_with_shared_secret(settings, t)]
