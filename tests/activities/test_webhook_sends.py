"""The worker's side of webhook secrets: made on first use, by the same rule as the API's."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from activities.webhooks import WebhookSends
from core.settings import Settings
from tests.conftest import unique


def test_first_use_in_the_worker_follows_the_seeding_rule(engine: Engine) -> None:
    solo, other = unique("solo"), unique("other")
    settings = Settings.model_validate({"env": "test", "api_keys": f"{unique('k')}:{solo}"})
    sends = WebhookSends(engine, settings)
    shared = settings.webhook_secret.get_secret_value()

    # The one tenant HERALD_API_KEYS names starts with HERALD_WEBHOOK_SECRET, even when a
    # worker sends its first webhook before the API seeded it.
    assert sends.secrets(solo) == (shared,)
    # Anyone else gets a random secret of their own, the same on every later send.
    mine = sends.secrets(other)
    assert len(mine) == 1 and mine[0].startswith("whsec_") and mine[0] != shared
    assert sends.secrets(other) == mine
    # Another worker process (another WebhookSends) reads the same secret.
    assert WebhookSends(engine, Settings(env="test")).secrets(other) == mine
