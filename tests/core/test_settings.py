from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from core.retry import RetryOverride
from core.settings import Settings
from core.types import Channel


def test_env_prefix_and_key_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_API_KEYS", "k1:acme, k2:globex")
    monkeypatch.setenv("HERALD_TASK_QUEUE_PREFIX", "hx")
    s = Settings()
    assert s.api_key_map() == {"k1": "acme", "k2": "globex"}
    assert s.channel_task_queue(Channel.EMAIL) == "hx-email"
    assert s.workflow_task_queue == "hx-workflows"
    assert s.temporal_target == "127.0.0.1:7233"


def test_malformed_key_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="key:tenant"):
        Settings.model_validate(dict(api_keys="just-a-key")).api_key_map()


def test_production_refuses_dev_defaults() -> None:
    good = dict(
        env="production",
        api_keys="k:t",
        webhook_secret="whsec_c2VjcmV0LXNlY3JldA==",
        tracking_secret="a-real-tracking-secret",
        public_url="https://herald.example.com",
        # Every channel has a provider: production refuses the sandbox (test_settings_production).
        sendgrid_api_key="SG.x",
        twilio_account_sid="AC1",
        twilio_auth_token="token",
        twilio_from_number="+15550000000",
        fcm_credentials_file="/etc/herald/fcm.json",
    )
    for missing, setting in (
        ("webhook_secret", "HERALD_WEBHOOK_SECRET"),
        ("tracking_secret", "HERALD_TRACKING_SECRET"),
        ("public_url", "HERALD_PUBLIC_URL"),
    ):
        with pytest.raises(ValidationError, match=setting):
            Settings.model_validate({k: v for k, v in good.items() if k != missing})
    with pytest.raises(ValidationError, match="https://"):
        Settings.model_validate({**good, "public_url": "http://herald.example.com"})
    ok = Settings.model_validate(good)
    assert ok.api_key_map() == {"k": "t"}
    # Keys may all be managed ones (`herald keys create`): none need be listed.
    assert Settings.model_validate({**good, "api_keys": ""}).api_key_map() == {}
    assert ok.base_url == "https://herald.example.com"


def test_public_url_defaults_to_the_api_address() -> None:
    s = Settings.model_validate(dict(api_host="127.0.0.5", api_port=8123))
    assert s.base_url == "http://127.0.0.5:8123"
    assert Settings.model_validate(dict(public_url="https://h.example/")).base_url == (
        "https://h.example"
    )


def test_webhook_secret_must_be_whsec_base64() -> None:
    with pytest.raises(ValidationError, match="whsec_"):
        Settings.model_validate(dict(webhook_secret="plain"))
    with pytest.raises(ValidationError, match="base64"):
        Settings.model_validate(dict(webhook_secret="whsec_not base64!"))


def test_channel_retry_defaults_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_RETRY_SMS", '{"initial_interval": "PT5S", "maximum_attempts": 3}')
    monkeypatch.setenv("HERALD_RATE_LIMIT_SMS", "5")
    s = Settings()
    spec = s.retry_for(Channel.SMS)
    assert spec.initial_interval == timedelta(seconds=5)
    assert spec.maximum_attempts == 3
    assert spec.backoff_coefficient == 2.0  # unset keeps the default
    assert s.rate_limit_for(Channel.SMS) == 5
    assert s.rate_limit_for(Channel.EMAIL) is None
    merged = spec.merged(RetryOverride(maximum_attempts=7))
    assert (merged.initial_interval, merged.maximum_attempts) == (timedelta(seconds=5), 7)
    monkeypatch.setenv("HERALD_RETRY_SMS", '{"initial_interval": "-PT5S"}')
    with pytest.raises(ValidationError, match="positive duration"):
        Settings()


def test_providers_default_to_every_configured_one_in_priority_order() -> None:
    bare = Settings(env="test", sendgrid_api_key=None, smtp_url=None)
    assert bare.providers_for(Channel.EMAIL) == ["sandbox"]
    assert bare.providers_for(Channel.WEBHOOK) == ["webhook"]
    both = Settings.model_validate(
        {"env": "test", "sendgrid_api_key": "SG.x", "smtp_url": "smtp://127.0.0.1:2525"}
    )
    assert both.providers_for(Channel.EMAIL) == ["sendgrid", "smtp"]
    smtp_only = Settings.model_validate(
        {"env": "test", "sendgrid_api_key": None, "smtp_url": "smtp://127.0.0.1:2525"}
    )
    assert smtp_only.providers_for(Channel.EMAIL) == ["smtp"]


def test_provider_order_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_PROVIDERS", '{"email": ["smtp", "sendgrid"]}')
    s = Settings.model_validate(
        {"env": "test", "sendgrid_api_key": "SG.x", "smtp_url": "smtp://127.0.0.1:2525"}
    )
    assert s.providers_for(Channel.EMAIL) == ["smtp", "sendgrid"]


@pytest.mark.parametrize(
    ("providers", "message"),
    [
        ({"email": ["mailgun"]}, "expected distinct names"),
        ({"sms": ["sendgrid"]}, "expected distinct names"),
        ({"email": ["smtp", "smtp"]}, "expected distinct names"),
        ({"email": []}, "expected distinct names"),
        ({"email": ["sendgrid", "smtp"]}, "lists smtp for email without its credentials"),
    ],
)
def test_bad_provider_lists_are_refused(providers: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings.model_validate(
            {"env": "test", "sendgrid_api_key": "SG.x", "smtp_url": None, "providers": providers}
        )
