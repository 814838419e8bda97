"""Settings for who may call the API and how often: the admin key, seeding, tenant limits."""

from __future__ import annotations

import math

from pydantic import BaseModel, Field, SecretStr, field_validator

# A shorter admin key is guessable; it can mint keys for every tenant.
MIN_ADMIN_KEY_LENGTH = 24


class AccessSettings(BaseModel):
    """Mixed into ``core.settings.Settings``; every field is read from ``HERALD_<NAME>``."""

    # Bearer key of the /v1/admin routes; unset turns them off (they answer 404).
    admin_key: SecretStr | None = None
    # At start, revoke keys seeded from HERALD_API_KEYS that it no longer lists. The test
    # suite turns this off: many Heralds with different key lists share one database there.
    api_keys_revoke_unlisted: bool = True
    # Requests per second per tenant, per API process; unset turns the limit off.
    tenant_rate_limit: float | None = Field(default=None, gt=0)
    # Requests a tenant may make at once after a quiet spell; default: one second's worth.
    tenant_rate_burst: int | None = Field(default=None, ge=1)

    @field_validator("admin_key")
    @classmethod
    def _admin_key_strength(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        if len(v.get_secret_value()) < MIN_ADMIN_KEY_LENGTH:
            raise ValueError(
                f"HERALD_ADMIN_KEY must be at least {MIN_ADMIN_KEY_LENGTH} characters "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return v

    @property
    def tenant_rate_capacity(self) -> int:
        """The bucket size: ``tenant_rate_burst``, else one second's worth (at least 1)."""
        if self.tenant_rate_burst is not None:
            return self.tenant_rate_burst
        return max(1, math.ceil(self.tenant_rate_limit or 1))
