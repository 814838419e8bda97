"""``make run`` heals itself: a child that dies is restarted with backoff, and the work it had
in flight still arrives. Real processes throughout (scripts/run.py, scripts/supervisor.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from scripts.supervisor import Backoff
from tests.conftest import unique
from tests.fakes.provider import FakeProvider
from tests.test_make_run import (
    Output,
    base_env,
    port_open,
    processes_mentioning,
    stop_and_assert_clean,
    supervisor_process,
    wait_for_banner,
)

REPO = Path(__file__).resolve().parent.parent
EVENTS = 150
IN_FLIGHT = 16  # activity slots per queue in the worker: the most a kill can leave unreported
KILL_AFTER = 40  # deliveries seen before the worker is killed


def test_backoff_doubles_to_a_cap_and_resets_after_a_long_uptime() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, reset_after=30.0)
    delays = [backoff.delay(uptime=1.0) for _ in range(9)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.delay(uptime=29.0) == 30  # still crash-looping
    assert backoff.delay(uptime=31.0) == 0.5  # it stayed up: start over
    assert backoff.delay(uptime=0.1) == 1


DRIVER = """
import os
import sys
from pathlib import Path

sys.path.insert(0, {repo!r})
from scripts.supervisor import Stop, Supervisor, say

sup = Supervisor(Path({cwd!r}))
sup.install_signal_handlers()
# A grandchild that ignores SIGTERM: only the SIGKILL to the whole group reaches it.
keep = '(trap "" TERM; exec sleep 300) & echo "grandchild $!"; '
env = {{"PATH": os.environ["PATH"]}}
sup.start("steady", ["sh", "-c", keep + "wait"], env)
sup.start("crasher", ["sh", "-c", keep + "echo boom; exit 3"], env)
sup.supervise()
try:
    while True:
        sup.sleep(0.5)
except Stop as stop:
    say(f"{{stop}}; shutting down")
sup.stop_all()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_crashing_child_backs_off_and_sigint_kills_every_group(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(repo=str(REPO), cwd=str(tmp_path)))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out = Output(proc)
    try:
        time.sleep(5.0)
        assert proc.poll() is None, f"the supervisor exited:\n{out.text}"
        cpu = _cpu_seconds(proc.pid)
        text = out.text
        grandchildren = [int(p) for p in re.findall(r"grandchild (\d+)", text)]
        crashes = text.count("[crasher] boom")
        delays = re.findall(r"crasher \(pid \d+\) exited with code 3 after [\d.]+s; "
                            r"restarting it in ([\d.]+)s", text)  # fmt: skip
        # Starts at about 0, 0.5, 1.5 and 3.5 s: four in 5 s, where a restart loop without
        # backoff would have made hundreds.
        assert 3 <= crashes <= 5, text
        assert delays[:3] == ["0.5", "1", "2"], text
        assert re.search(r"restarted crasher \(pid \d+, restart 3\)", text), text
        assert cpu < 1.5, f"the supervisor used {cpu:.2f}s of CPU in 5s"
        # Each dead crasher's grandchild went with it: only steady's and the newest live.
        assert len(grandchildren) - 1 in (crashes, crashes + 1), text
        live = [pid for pid in grandchildren if _alive(pid)]
        assert 1 <= len(live) <= 2, (live, text)

        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) == 0, out.text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    time.sleep(0.2)
    assert "received SIGINT; shutting down" in out.text
    assert "all processes stopped" in out.text
    assert [pid for pid in grandchildren if _alive(pid)] == []
    assert "restarted steady" not in out.text


# -- the real stack ---------------------------------------------------------------------------


def _stack_env(
    tmp_path: Path, request: pytest.FixtureRequest, database_url: str, provider: FakeProvider
) -> tuple[dict[str, str], dict[str, int], str]:
    env, ports = base_env(tmp_path)
    if make_url(database_url).get_backend_name() != "sqlite":
        request.getfixturevalue("engine")  # a fresh schema on the shared server
        env["HERALD_DATABASE_URL"] = database_url
    key = unique("hk_test")
    env.update(
        HERALD_API_KEYS=f"{key}:{unique('tenant')}",  # a tenant of its own on a shared database
        HERALD_SENDGRID_API_KEY="SG.test",
        HERALD_SENDGRID_BASE_URL=provider.url,
        # An attempt on the killed worker is retried after 3 s, not the default 30 s.
        HERALD_RETRY_EMAIL='{"start_to_close": 3, "initial_interval": 0.2}',
        HERALD_WORKER_MAX_CONCURRENT_ACTIVITIES=str(IN_FLIGHT),
        HERALD_DISPATCH_SWEEP_SECONDS="1",
    )
    return env, ports, key


def _pid_of(marker: str, command: str, out: Output) -> int:
    """The one live process of this stack whose command line contains ``command``."""
    found = [p for p, cmd in processes_mentioning(marker).items() if command in cmd]
    found = [p for p in found if _alive(p)]
    assert len(found) == 1, f"{command}: {found}\n{out.tail()}"
    return found[0]


def _wait_for(what: str, check: Callable[[], bool], out: Output, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {within:.0f}s:\n{out.tail()}"
        time.sleep(0.1)


def delivered(provider: FakeProvider) -> Counter[str]:
    return Counter(r.json["subject"] for r in provider.requests("sendgrid") if r.status == 202)


def _setup_flow(client: httpx.Client, out: Output) -> str:
    sub = unique("u")
    resp = client.put(f"/v1/subscribers/{sub}", json={"email": "k@example.com"})
    assert resp.is_success, f"{resp.text}\n{out.tail()}"
    flow = {
        "event_type": "supervised.test",
        "steps": [{"channel": "email", "subject": "n{{ data.n }}", "text": "x"}],
    }
    resp = client.put("/v1/flows/supervised", json=flow)
    assert resp.is_success, f"{resp.text}\n{out.tail()}"
    return sub


def test_worker_sigkill_mid_run_is_restarted_and_all_150_arrive(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    database_url: str,
    fresh_provider: FakeProvider,
) -> None:
    env, ports, key = _stack_env(tmp_path, request, database_url, fresh_provider)
    marker = str(tmp_path)
    api = f"http://127.0.0.1:{ports['api']}"
    headers = {"Authorization": f"Bearer {key}"}
    with (
        supervisor_process(env, marker) as (proc, out),
        httpx.Client(base_url=api, headers=headers, timeout=15) as client,
    ):
        wait_for_banner(proc, out)
        worker = _pid_of(marker, "worker.py", out)
        sub = _setup_flow(client, out)

        event_ids: list[str] = []
        errors: list[str] = []

        def publish() -> None:
            with httpx.Client(base_url=api, headers=headers, timeout=15) as c:
                for n in range(EVENTS):
                    r = c.post(
                        "/v1/events",
                        json={"type": "supervised.test", "to": [sub], "data": {"n": n}},
                    )
                    if r.status_code != 202:
                        errors.append(r.text)
                        return
                    event_ids.append(r.json()["id"])

        publisher = threading.Thread(target=publish)
        publisher.start()
        _wait_for("first deliveries", lambda: len(delivered(fresh_provider)) >= KILL_AFTER, out, 30)
        os.kill(worker, signal.SIGKILL)  # mid-run, with activities in flight
        killed_at, posted_at = len(delivered(fresh_provider)), len(event_ids)
        publisher.join(60)
        assert not errors, errors
        assert len(event_ids) == EVENTS
        assert killed_at < EVENTS, "the run finished before the kill; nothing was proven"

        # The supervisor noticed, said so, and started a new worker; nothing else restarted.
        _wait_for("the worker restart", lambda: "restarted worker" in out.text, out, 10)
        assert re.search(
            rf"worker \(pid {worker}\) was killed by SIGKILL after [\d.]+s; restarting it in 0.5s",
            out.text,
        ), out.tail()
        new_worker = _pid_of(marker, "worker.py", out)
        assert new_worker != worker
        assert f"restarted worker (pid {new_worker}, restart 1)" in out.text
        assert _alive(new_worker) and not _alive(worker)
        assert "restarted api" not in out.text and "restarted temporal" not in out.text

        # Every one of the 150 arrives at the provider and is recorded as sent.
        want = {f"n{n}" for n in range(EVENTS)}
        _wait_for("all deliveries", lambda: want <= set(delivered(fresh_provider)), out, 45)

        def statuses() -> Counter[str]:
            seen: Counter[str] = Counter()
            for event_id in event_ids:
                body = client.get(f"/v1/events/{event_id}").json()
                seen.update(d["status"] for n in body["notifications"] for d in n["deliveries"])
            return seen

        def all_sent() -> bool:
            seen = statuses()
            return seen.total() == EVENTS and set(seen) <= {"sent", "delivered"}

        _wait_for("every delivery sent", all_sent, out, 20)
        counts = delivered(fresh_provider)
        duplicates = sum(v - 1 for v in counts.values())
        sys.stderr.write(
            f"worker SIGKILL after {killed_at} sent / {posted_at} posted: "
            f"{len(counts)}/{EVENTS} arrived, {duplicates} sent twice\n"
        )
        # At-least-once: a send whose result the killed worker never recorded may repeat,
        # bounded by what was in flight.
        assert duplicates <= IN_FLIGHT

        stop_and_assert_clean(proc, out, signal.SIGTERM, marker, ports.values())
        assert not _alive(new_worker)


def test_temporal_and_api_sigkill_are_restarted_and_sigint_stops_everything(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    database_url: str,
    fresh_provider: FakeProvider,
) -> None:
    env, ports, key = _stack_env(tmp_path, request, database_url, fresh_provider)
    marker = str(tmp_path)
    api = f"http://127.0.0.1:{ports['api']}"
    headers = {"Authorization": f"Bearer {key}"}
    with (
        supervisor_process(env, marker) as (proc, out),
        httpx.Client(base_url=api, headers=headers, timeout=15) as client,
    ):
        wait_for_banner(proc, out)
        sub = _setup_flow(client, out)
        temporal = _pid_of(marker, "start-dev", out)

        os.kill(temporal, signal.SIGKILL)
        _wait_for("the Temporal restart", lambda: "restarted temporal" in out.text, out, 10)
        assert re.search(rf"temporal \(pid {temporal}\) was killed by SIGKILL", out.text)
        _wait_for("the Temporal port", lambda: port_open(ports["temporal"]), out, 30)

        # The worker and the API reconnect by themselves: an event posted now is delivered.
        # (While the API still thinks Temporal is down it answers 503 with the event stored,
        # and its sweep starts it; the Idempotency-Key keeps a second try the same event.)
        body = {"type": "supervised.test", "to": [sub], "data": {"n": "after-restart"}}
        resp = client.post("/v1/events", json=body, headers={"Idempotency-Key": unique("k")})
        assert resp.status_code in (202, 503), resp.text
        _wait_for(
            "the delivery after the restart",
            lambda: "nafter-restart" in delivered(fresh_provider),
            out,
            40,
        )
        sys.stderr.write(
            "after a Temporal SIGKILL: "
            f"worker restarted: {'restarted worker' in out.text}, "
            f"api restarted: {'restarted api' in out.text}\n"
        )

        # The API comes back too, on the same port.
        api_pid = _pid_of(marker, "uvicorn", out)
        os.kill(api_pid, signal.SIGKILL)
        _wait_for("the API restart", lambda: "restarted api" in out.text, out, 10)
        assert re.search(rf"api \(pid {api_pid}\) was killed by SIGKILL", out.text)

        def posted() -> bool:
            try:
                body = {"type": "supervised.test", "to": [sub], "data": {"n": "after-api"}}
                return client.post("/v1/events", json=body).status_code == 202
            except httpx.TransportError:
                return False

        _wait_for("an event accepted by the new API", posted, out, 30)
        _wait_for("its delivery", lambda: "nafter-api" in delivered(fresh_provider), out, 20)

        stop_and_assert_clean(proc, out, signal.SIGINT, marker, ports.values())
        assert "received SIGINT; shutting down" in out.text
