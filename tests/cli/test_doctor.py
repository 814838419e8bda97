"""``herald doctor`` against the real test database, Temporal dev server and fake providers."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from cli.main import app
from core.settings import get_settings
from tests.conftest import unique
from tests.fakes.net import free_port
from tests.fakes.provider import FakeProvider
from tests.fakes.smtp import FakeSmtp

runner = CliRunner()
SMTP_USER, SMTP_PASSWORD = "herald", "s3cret"


@pytest.fixture
def smtp() -> Iterator[FakeSmtp]:
    with FakeSmtp(username=SMTP_USER, password=SMTP_PASSWORD) as server:
        yield server


@pytest.fixture(autouse=True)
def healthy_env(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    temporal_env: WorkflowEnvironment,
    fresh_provider: FakeProvider,
    smtp: FakeSmtp,
    tmp_path: Path,
) -> Iterator[None]:
    """Every setting doctor checks, pointed at something real that works (all on loopback)."""
    for name in [n for n in os.environ if n.startswith("HERALD_")]:
        monkeypatch.delenv(name)
    env = {
        "ENV": "test",
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "SMTP_URL": smtp.url(SMTP_USER, SMTP_PASSWORD),
    }
    for field, value in fresh_provider.settings_overrides(tmp_path).items():
        env[field.upper()] = str(value)
    for name, value in env.items():
        monkeypatch.setenv(f"HERALD_{name}", value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def doctor(*args: str) -> Result:
    """In a thread: doctor runs its own event loop, and the test's must keep serving."""
    get_settings.cache_clear()
    return await asyncio.to_thread(runner.invoke, app, ["doctor", *args])


def lines(result: Result) -> dict[str, tuple[str, str]]:
    """check -> (ok or FAIL, detail), from the text output."""
    found = {}
    for line in result.stdout.splitlines():
        status, rest = line.split(maxsplit=1)
        check, _, detail = rest.partition("  ")
        found[check.strip()] = (status, detail.strip())
    return found


async def test_everything_ok_checks_each_provider_without_sending(
    fresh_provider: FakeProvider, smtp: FakeSmtp
) -> None:
    result = await doctor()
    assert result.exit_code == 0, result.output
    checks = lines(result)
    assert list(checks) == [
        "settings",
        "database",
        "temporal",
        "search attributes",
        "email/sendgrid",
        "email/smtp",
        "sms/twilio",
        "push/fcm",
    ]
    assert {status for status, _ in checks.values()} == {"ok"}, result.stdout
    assert "schema at" in checks["database"][1]
    assert "all 7 registered" in checks["search attributes"][1]
    assert "mail.send" in checks["email/sendgrid"][1]
    assert f"logged in as {SMTP_USER}" in checks["email/smtp"][1]
    assert "active" in checks["sms/twilio"][1]
    assert "token issued" in checks["push/fcm"][1]

    # Credentials were proven with read-only calls; nothing was sent anywhere.
    asked = [(r.kind, r.method, r.path.rsplit("/", 1)[-1]) for r in fresh_provider.requests()]
    sid = "AC" + "0123456789abcdef" * 2
    assert asked == [
        ("sendgrid", "GET", "scopes"),
        ("twilio", "GET", f"{sid}.json"),
        ("token", "POST", "token"),
    ]
    assert smtp.messages == []


async def test_each_failure_is_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_provider: FakeProvider
) -> None:
    missing_dir = tmp_path / "nowhere"
    monkeypatch.setenv("HERALD_DATABASE_URL", f"sqlite:///{missing_dir / 'herald.db'}")
    monkeypatch.setenv("HERALD_TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("HERALD_SENDGRID_API_KEY", "not-a-sendgrid-key")
    monkeypatch.setenv("HERALD_SMTP_URL", FakeSmtp().url(SMTP_USER, "wrong"))  # never started
    fresh_provider.fail("token", 400)
    result = await doctor()
    assert result.exit_code == 1, result.output
    checks = lines(result)
    assert checks["settings"][0] == "ok"
    status, detail = checks["database"]
    assert status == "FAIL" and "no database file" in detail and "herald migrate" in detail
    assert not missing_dir.exists()  # a check creates nothing
    status, detail = checks["temporal"]
    assert status == "FAIL" and "Connection refused" in detail
    assert "search attributes" not in checks  # not asked of a server that is not there
    status, detail = checks["email/sendgrid"]
    assert status == "FAIL" and "401" in detail and "HERALD_SENDGRID_API_KEY" in detail
    status, detail = checks["email/smtp"]
    assert status == "FAIL" and "cannot talk to 127.0.0.1" in detail
    status, detail = checks["push/fcm"]
    assert status == "FAIL" and "invalid_grant" in detail
    assert checks["sms/twilio"][0] == "ok"
    assert "Traceback" not in result.output and result.stderr == ""


async def test_json_lists_every_check(monkeypatch: pytest.MonkeyPatch, smtp: FakeSmtp) -> None:
    monkeypatch.setenv("HERALD_SMTP_URL", smtp.url(SMTP_USER, "wrong"))
    monkeypatch.setenv("HERALD_PROVIDERS", json.dumps({"email": ["smtp"]}))
    monkeypatch.delenv("HERALD_TWILIO_ACCOUNT_SID")  # SMS falls back to the sandbox
    result = await doctor("--json")
    assert result.exit_code == 1, result.output
    report: list[dict[str, Any]] = json.loads(result.stdout)
    assert all(set(r) == {"check", "ok", "detail"} for r in report)
    by_name = {r["check"]: r for r in report}
    assert "email/sendgrid" not in by_name
    assert by_name["email/smtp"]["ok"] is False
    assert f"refused the login of {SMTP_USER}: 535" in by_name["email/smtp"]["detail"]
    assert by_name["sms"] == {
        "check": "sms",
        "ok": True,
        "detail": "sandbox: no provider configured, messages are recorded, not sent",
    }
    assert [r["check"] for r in report if not r["ok"]] == ["email/smtp"]


async def test_an_unmigrated_database_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_provider: FakeProvider
) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    monkeypatch.setenv("HERALD_DATABASE_URL", f"sqlite:///{empty}")
    fresh_provider.fail("twilio", 401)
    result = await doctor()
    assert result.exit_code == 1
    checks = lines(result)
    status, detail = checks["database"]
    assert status == "FAIL" and "at revision none" in detail and "`herald migrate`" in detail
    assert not sqlite3.connect(empty).execute("SELECT name FROM sqlite_master").fetchall()
    status, detail = checks["sms/twilio"]
    assert status == "FAIL" and "refused account AC" in detail and "401" in detail


async def test_a_namespace_without_the_search_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = unique("ns")
    monkeypatch.setenv("HERALD_TEMPORAL_NAMESPACE", namespace)
    result = await doctor()
    assert result.exit_code == 1
    checks = lines(result)
    assert checks["temporal"] == ("ok", checks["temporal"][1])
    status, detail = checks["search attributes"]
    assert status == "FAIL" and f"namespace {namespace}" in detail and "not found" in detail


async def test_invalid_settings_stop_at_the_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_TENANT_RATE_LIMIT", "fast")
    result = await doctor()
    assert result.exit_code == 1
    (line,) = result.stdout.splitlines()
    assert line.startswith("FAIL  settings") and "HERALD_TENANT_RATE_LIMIT" in line
