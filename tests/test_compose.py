"""docker-compose.yml: the production topology starts in order and stays in sync with the code."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.types import SEARCH_ATTRIBUTES
from scripts.run import DEV_SERVER_DYNAMIC_CONFIG

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
REQUIRED_ENV = {
    "HERALD_WEBHOOK_SECRET": "whsec_" + "A" * 32,
    "HERALD_TRACKING_SECRET": "x" * 32,
    "HERALD_PUBLIC_URL": "https://herald.example.com",
}


def services() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return spec["services"]


def test_docker_compose_config_validates() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the docker compose plugin is not installed: {probe.stderr.strip()}")
    env = {**os.environ, **REQUIRED_ENV}
    done = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--profile", "broker", "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr


def test_every_awaited_health_has_a_healthcheck_and_jobs_are_one_shot() -> None:
    spec = services()
    for name, service in spec.items():
        for dep, condition in (service.get("depends_on") or {}).items():
            assert dep in spec, f"{name} depends on unknown {dep}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in spec[dep], f"{name} waits for {dep}, which has none"
            if condition["condition"] == "service_completed_successfully":
                assert spec[dep]["restart"] == "no", f"{dep} is a job: it must not restart"


def test_nothing_of_herald_starts_before_the_schema_is_migrated() -> None:
    spec = services()
    assert spec["migrate"]["command"] == ["herald", "migrate"]
    herald = [n for n, s in spec.items() if s.get("image") == "herald:latest" and n != "migrate"]
    for name in herald:
        if name == "temporal-init":
            continue
        assert spec[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    queues = {n: s["command"][-1] for n, s in spec.items() if n.startswith("herald-worker")}
    assert queues == {
        "herald-worker-workflows": "workflows",
        "herald-worker-channels": "email,sms,push,webhook",
    }


def test_the_init_job_registers_every_search_attribute() -> None:
    script = " ".join(services()["temporal-init"]["command"])
    assert all(f"--name {name}" in script for name in SEARCH_ATTRIBUTES)


def test_temporal_gets_the_dynamic_config_make_run_gives_the_dev_server() -> None:
    temporal = services()["temporal"]
    path = temporal["environment"]["DYNAMIC_CONFIG_FILE_PATH"]
    host_dir, _, mounted = temporal["volumes"][0].partition(":")
    mounted = mounted.removesuffix(":ro")
    # auto-setup runs from /etc/temporal, so the path is relative to it.
    assert f"/etc/temporal/{path}".startswith(mounted + "/")
    config_file = COMPOSE.parent / host_dir / Path(path).name
    config = yaml.safe_load(config_file.read_text())
    assert {k: v[0]["value"] for k, v in config.items()} == DEV_SERVER_DYNAMIC_CONFIG
