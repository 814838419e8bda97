"""Production mode: no silent sandbox, and Temporal's TLS, mTLS and API-key settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.service import TLSConfig

from channels.registry import build_adapters
from core.deployment import sandbox_allowed, sandboxed_channels
from core.settings import Settings
from core.temporal import connect_options
from core.types import Channel

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION: dict[str, Any] = {
    "env": "production",
    "api_keys": "k:t",
    "webhook_secret": "whsec_c2VjcmV0LXNlY3JldA==",
    "tracking_secret": "a-real-tracking-secret",
    "public_url": "https://herald.example.com",
}
PROVIDERS: dict[str, Any] = {
    "sendgrid_api_key": "SG.x",
    "twilio_account_sid": "AC1",
    "twilio_auth_token": "token",
    "twilio_from_number": "+15550000000",
    "fcm_credentials_file": "/etc/herald/fcm.json",
}


def test_production_refuses_a_channel_that_would_fall_back_to_the_sandbox() -> None:
    with pytest.raises(ValidationError) as err:
        Settings.model_validate(PRODUCTION)
    text = str(err.value)
    assert "email: set HERALD_SENDGRID_API_KEY or HERALD_SMTP_URL" in text
    assert "sms: set HERALD_TWILIO_ACCOUNT_SID, HERALD_TWILIO_AUTH_TOKEN and " in text
    assert "push: set HERALD_FCM_CREDENTIALS_FILE" in text
    assert "webhook" not in text  # webhooks post to URLs: they never fall back
    assert "HERALD_SANDBOX=true" in text

    # One channel short, and only the settings it still lacks are named.
    partial = {**PRODUCTION, **PROVIDERS, "twilio_from_number": None}
    with pytest.raises(ValidationError, match=r"sms: set HERALD_TWILIO_FROM_NUMBER \(") as err:
        Settings.model_validate(partial)
    assert "email" not in str(err.value) and "push" not in str(err.value)
    # SMTP alone is a provider for email, as SendGrid alone is.
    smtp = {**PRODUCTION, **PROVIDERS, "sendgrid_api_key": None, "smtp_url": "smtp://h:25"}
    assert Settings.model_validate(smtp).providers_for(Channel.EMAIL) == ["smtp"]
    # Naming the sandbox in HERALD_PROVIDERS is refused too.
    listed = {**PRODUCTION, **PROVIDERS, "providers": {"push": ["fcm", "sandbox"]}}
    with pytest.raises(ValidationError, match="push: HERALD_PROVIDERS lists the sandbox"):
        Settings.model_validate(listed)


def test_the_sandbox_can_be_allowed_in_production_and_is_always_allowed_elsewhere() -> None:
    allowed = Settings.model_validate({**PRODUCTION, "sandbox": True})
    assert allowed.providers_for(Channel.EMAIL) == ["sandbox"]
    assert sandbox_allowed(allowed)
    assert allowed.providers_for(Channel.WEBHOOK) == ["webhook"]
    real = Settings.model_validate({**PRODUCTION, **PROVIDERS})
    assert not sandbox_allowed(real) and sandboxed_channels(real) == []
    dev = Settings.model_validate({})
    assert sandbox_allowed(dev) and len(sandboxed_channels(dev)) == 3


def test_the_worker_registry_refuses_the_sandbox_in_unvalidated_production_settings() -> None:
    """``model_copy`` skips validation; the worker still never records "sent" silently."""
    sneaky = Settings.model_validate({}).model_copy(update={"env": "production"})
    with pytest.raises(ValueError, match="email: set HERALD_SENDGRID_API_KEY"):
        build_adapters(sneaky, lambda message: None)
    allowed = sneaky.model_copy(update={"sandbox": True})
    assert set(build_adapters(allowed, lambda message: None)[Channel.SMS]) == {"sandbox"}


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "worker.py"],
        [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--port", "0"],
    ],
    ids=["worker", "api"],
)
def test_worker_and_api_refuse_to_start(command: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update({f"HERALD_{k.upper()}": str(v) for k, v in PRODUCTION.items()})
    env["HERALD_DATABASE_URL"] = f"sqlite:///{tmp_path / 'herald.db'}"
    env["HERALD_TEMPORAL_ADDRESS"] = "127.0.0.1:1"  # never reached: refused before
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert "email: set HERALD_SENDGRID_API_KEY or HERALD_SMTP_URL" in done.stderr
    assert not (tmp_path / "herald.db").exists()  # refused before touching anything


# --- Temporal connection -------------------------------------------------------------


def _files(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name in ("cert", "key", "ca"):
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(f"-----{name}-----\n".encode())
    return paths


def test_a_client_certificate_needs_its_key_and_files_must_exist(tmp_path: Path) -> None:
    f = _files(tmp_path)
    for only in ("cert", "key"):
        with pytest.raises(ValidationError) as err:
            Settings.model_validate({f"temporal_tls_{only}": f[only]})
        assert "HERALD_TEMPORAL_TLS_CERT and HERALD_TEMPORAL_TLS_KEY" in str(err.value)
    with pytest.raises(ValidationError, match="temporal_tls_ca"):
        Settings.model_validate({"temporal_tls_ca": tmp_path / "missing.pem"})
    # An empty variable (compose passes unset ones through as empty) means unset.
    blank = Settings.model_validate(
        {"temporal_tls_cert": "", "temporal_tls_key": "", "temporal_api_key": ""}
    )
    assert blank.temporal_tls_cert is None and blank.temporal_api_key is None


def test_connect_options_without_tls_are_plain() -> None:
    s = Settings.model_validate({"temporal_namespace": "herald-dev"})
    assert connect_options(s) == {"namespace": "herald-dev", "tls": False}


def test_connect_options_for_mtls_read_the_files(tmp_path: Path) -> None:
    f = _files(tmp_path)
    s = Settings.model_validate(
        {
            "temporal_namespace": "prod.acct",
            "temporal_tls_cert": f["cert"],
            "temporal_tls_key": f["key"],
            "temporal_tls_ca": f["ca"],
            "temporal_tls_server_name": "temporal.internal",
        }
    )
    assert connect_options(s) == {
        "namespace": "prod.acct",
        "tls": TLSConfig(
            server_root_ca_cert=b"-----ca-----\n",
            domain="temporal.internal",
            client_cert=b"-----cert-----\n",
            client_private_key=b"-----key-----\n",
        ),
    }


def test_an_api_key_implies_tls_with_system_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_TEMPORAL_API_KEY", "tcld-key")
    monkeypatch.setenv("HERALD_TEMPORAL_ADDRESS", "acct.tmprl.cloud:7233")
    s = Settings()
    assert s.temporal_uses_tls
    assert connect_options(s) == {"namespace": "default", "api_key": "tcld-key", "tls": TLSConfig()}
    assert "tcld-key" not in repr(s)  # a secret: never in logs
    plain_tls = Settings.model_validate({"temporal_tls": True})
    assert connect_options(plain_tls)["tls"] == TLSConfig()
