"""``herald keys``: the CLI writes the same table the API authenticates against."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from importlib.metadata import entry_points
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from cli.main import app
from core.settings import get_settings
from store.api_keys import KEY_CACHE_SECONDS
from tests.conftest import make_settings, open_api, unique

runner = CliRunner()


@pytest.fixture(autouse=True)
def herald_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[None]:
    """The CLI reads HERALD_* like the API does; point it at the test database."""
    for name in [n for n in os.environ if n.startswith("HERALD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HERALD_ENV", "test")
    monkeypatch.setenv("HERALD_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def herald(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok_json(*args: str) -> Any:
    result = herald(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_create_list_revoke_as_json() -> None:
    tenant = unique("acme")
    created = ok_json("keys", "create", "--tenant", tenant, "--name", "ci")
    plaintext = created["key"]
    assert plaintext.startswith("hk_") and created["prefix"] == plaintext[:11]
    assert created["tenant"] == tenant and created["name"] == "ci"

    listed = herald("keys", "list", "--tenant", tenant, "--json")
    assert listed.exit_code == 0 and plaintext not in listed.output
    (key,) = json.loads(listed.stdout)
    assert key["id"] == created["id"] and "key" not in key and key["last_used_at"] is None

    revoked = ok_json("keys", "revoke", created["id"])
    assert revoked["revoked_reason"] == "revoked" and revoked["revoked_at"] is not None
    assert ok_json("keys", "list", "--tenant", tenant) == []
    (gone,) = ok_json("keys", "list", "--tenant", tenant, "--all")
    assert gone["id"] == created["id"]


def test_text_output_prints_the_key_alone_on_stdout() -> None:
    tenant = unique("acme")
    result = herald("keys", "create", "--tenant", tenant, "--name", "deploy bot")
    assert result.exit_code == 0, result.output
    plaintext = result.stdout.strip()
    assert plaintext.startswith("hk_") and "\n" not in plaintext  # KEY=$(herald keys create …)
    assert "not shown again" in result.stderr

    table = herald("keys", "list", "--tenant", tenant)
    assert table.exit_code == 0
    header, row = table.stdout.splitlines()
    assert header.split()[:3] == ["ID", "PREFIX", "TENANT"]
    assert f"{plaintext[:11]}…" in row and "deploy bot" in row and "never" in row
    assert plaintext not in table.stdout
    key_id = row.split()[0]

    revoked = herald("keys", "revoke", key_id)
    assert revoked.exit_code == 0 and key_id in revoked.stdout
    assert f"within {KEY_CACHE_SECONDS:g} s" in revoked.stdout
    assert "revoked (revoked)" in herald("keys", "list", "--tenant", tenant, "--all").stdout


def test_bad_input_names_the_option_and_stores_nothing() -> None:
    tenant = unique("acme")
    result = herald("keys", "create", "--tenant", f"{tenant}.x", "--name", "ci")
    assert result.exit_code == 2 and "--tenant" in result.stderr
    result = herald("keys", "create", "--tenant", tenant, "--name", " ")
    assert result.exit_code == 2 and "--name" in result.stderr
    assert ok_json("keys", "list", "--tenant", tenant, "--all") == []
    result = herald("keys", "revoke", "key_does_not_exist")
    assert result.exit_code == 1 and "no API key 'key_does_not_exist'" in result.stderr


def test_invalid_settings_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_ADMIN_KEY", "too-short")
    result = herald("keys", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("herald: invalid settings: HERALD_ADMIN_KEY:")
    assert "Traceback" not in result.output


def test_help_lists_the_command_groups() -> None:
    result = herald()
    assert "keys" in result.output and "Usage" in result.output
    assert "create" in herald("keys", "--help").output


def test_console_script_is_installed() -> None:
    (script,) = entry_points(group="console_scripts", name="herald")
    assert script.value == "cli.main:app"


@pytest.fixture
async def api(temporal_env: WorkflowEnvironment, database_url: str) -> AsyncIterator[Any]:
    async with AsyncExitStack() as stack:
        target = temporal_env.client.service_client.config.target_host
        settings, key, _ = make_settings(database_url, temporal_address=target)
        app_, http = await open_api(stack, settings, key, temporal_env.client)
        yield app_, http


async def test_a_cli_key_works_on_the_api_until_revoked(api: Any) -> None:
    app_, http = api
    clock = [1_900_000_000.0]
    app_.state.key_auth.clock = lambda: clock[0]
    tenant = unique("acme")
    created = ok_json("keys", "create", "--tenant", tenant, "--name", "ci")
    auth = {"Authorization": f"Bearer {created['key']}"}

    async def flows() -> httpx.Response:
        return await http.get("/v1/flows", headers=auth)

    assert (await flows()).status_code == 200
    (used,) = ok_json("keys", "list", "--tenant", tenant)
    assert used["last_used_at"] is not None

    assert herald("keys", "revoke", created["id"]).exit_code == 0
    clock[0] += KEY_CACHE_SECONDS  # the API process re-reads the key: revoked
    r = await flows()
    assert r.status_code == 401
