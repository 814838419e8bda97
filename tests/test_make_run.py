"""End to end: ``scripts/run.py`` (what ``make run`` executes) with real processes.

Starts the supervisor on free ports with a throwaway data dir, waits for its banner, sends a
notification through the sandbox email provider, then stops it with SIGTERM and checks that
nothing it started is left behind. The helpers are shared with tests/test_supervisor.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_MARKER = "Herald is running"  # printed by scripts/run.py once /healthz answers 200

BANNER_TIMEOUT = 90.0
DELIVERY_TIMEOUT = 30.0
EXIT_TIMEOUT = 20.0


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def processes_mentioning(marker: str) -> dict[int, str]:
    """Live processes whose command line or environment contains ``marker``.

    The temporal server has the data dir in its ``--db-filename``; the worker and the API get
    it through ``HERALD_DATA_DIR`` in their environment.
    """
    found: dict[int, str] = {}
    needle = marker.encode()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if needle in cmdline or needle in environ:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


class Output:
    """Collects the supervisor's merged stdout/stderr from a reader thread."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self.lines.append(line)
            if READY_MARKER in line:
                self.ready.set()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def tail(self, n: int = 80) -> str:
        useful = [line for line in self.lines if "/v1/sandbox/messages HTTP" not in line]
        return "\n".join(useful[-n:])


@contextlib.contextmanager
def supervisor_process(
    env: dict[str, str], marker: str
) -> Iterator[tuple[subprocess.Popen[bytes], Output]]:
    proc = subprocess.Popen(
        [sys.executable, "scripts/run.py"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out = Output(proc)
    try:
        yield proc, out
    finally:
        # Only reached with live processes when the test failed: don't leak them into CI.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in processes_mentioning(marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def base_env(tmp_path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The environment of a ``make run`` on free ports with its state under ``tmp_path``."""
    temporal_port, ui_port, api_port = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(
        HERALD_DATA_DIR=str(tmp_path / "herald-data"),
        HERALD_DATABASE_URL=f"sqlite:///{tmp_path / 'herald.db'}",
        HERALD_TEMPORAL_PORT=str(temporal_port),
        HERALD_TEMPORAL_UI_PORT=str(ui_port),
        HERALD_API_PORT=str(api_port),
        HERALD_API_HOST="127.0.0.1",
        PYTHONUNBUFFERED="1",
    )
    return env, {"temporal": temporal_port, "ui": ui_port, "api": api_port}


def wait_for_banner(proc: subprocess.Popen[bytes], out: Output) -> None:
    deadline = time.monotonic() + BANNER_TIMEOUT
    while not out.ready.wait(0.2):
        assert proc.poll() is None, (
            f"scripts/run.py exited with {proc.returncode} before its banner:\n{out.tail()}"
        )
        assert time.monotonic() < deadline, f"no banner after {BANNER_TIMEOUT:.0f}s:\n{out.tail()}"
    time.sleep(0.2)  # the banner is several lines; let the reader catch up


def stop_and_assert_clean(
    proc: subprocess.Popen[bytes],
    out: Output,
    sig: signal.Signals,
    marker: str,
    ports: Iterable[int],
) -> None:
    """``sig`` stops everything, in time, with exit code 0 and no leftovers."""
    os.kill(proc.pid, sig)
    try:
        code = proc.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {EXIT_TIMEOUT:.0f}s after {sig.name}:\n{out.tail()}")
    assert code == 0, f"exit code {code}:\n{out.tail()}"

    leftovers = processes_mentioning(marker)
    deadline = time.monotonic() + 5
    while leftovers and time.monotonic() < deadline:  # allow init to reap killed stragglers
        time.sleep(0.2)
        leftovers = processes_mentioning(marker)
    assert not leftovers, f"processes survived the supervisor: {leftovers}"
    busy = [p for p in ports if port_open(p)]
    assert not busy, f"ports still accepting connections: {busy}"


def _wait_for_message(
    client: httpx.Client, subject: str, out: Output, proc: subprocess.Popen[bytes]
) -> dict[str, Any]:
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    last: Any = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"supervisor died:\n{out.tail()}"
        resp = client.get("/v1/sandbox/messages")
        assert resp.status_code == 200, resp.text
        last = resp.json()
        for item in last["items"]:
            if item.get("content", {}).get("subject") == subject:
                return dict(item)
        time.sleep(0.3)
    raise AssertionError(
        f"no sandbox message with subject {subject!r} after {DELIVERY_TIMEOUT:.0f}s; "
        f"last response: {last}\n--- output ---\n{out.tail()}"
    )


def test_make_run_starts_everything_and_stops_cleanly(tmp_path: Path) -> None:
    env, ports = base_env(tmp_path)
    data_dir = Path(env["HERALD_DATA_DIR"])
    api_port, ui_port = ports["api"], ports["ui"]
    marker = str(tmp_path)

    with supervisor_process(env, marker) as (proc, out):
        # 1. The banner, with the generated dev key.
        wait_for_banner(proc, out)
        key_file = data_dir / "dev-api-key"
        key = key_file.read_text().strip()
        assert key.startswith("hk_dev_")
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key in out.text
        api_base = f"http://127.0.0.1:{api_port}"
        assert f"{api_base}/docs" in out.text
        assert f"{api_base}/dashboard" in out.text
        assert f"http://127.0.0.1:{ui_port}" in out.text

        # 2. The URLs it advertises answer.
        assert httpx.get(f"{api_base}/docs", timeout=10).status_code == 200
        assert httpx.get(f"{api_base}/dashboard", timeout=10).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{ui_port}/", timeout=10).status_code == 200

        # 3. A notification goes all the way through Temporal to the sandbox.
        headers = {"Authorization": f"Bearer {key}"}
        step = {"channel": "email", "subject": "Hi {{ subscriber.name }}", "text": "Welcome"}
        with httpx.Client(base_url=api_base, headers=headers, timeout=15) as client:
            resp = client.put(
                "/v1/subscribers/sub-e2e", json={"email": "ada@example.com", "name": "Ada"}
            )
            assert resp.is_success, resp.text
            resp = client.put(
                "/v1/flows/welcome-e2e",
                json={"event_type": "user.signup", "steps": [step]},
            )
            assert resp.is_success, resp.text
            resp = client.post("/v1/events", json={"type": "user.signup", "to": ["sub-e2e"]})
            assert resp.is_success, resp.text

            message = _wait_for_message(client, "Hi Ada", out, proc)
            assert message["channel"] == "email"
            assert "ada@example.com" in message["to"]
            assert message["content"]["text"] == "Welcome"

        # 4. SIGTERM stops everything, in time, with exit code 0 and no leftovers.
        stop_and_assert_clean(proc, out, signal.SIGTERM, marker, ports.values())
