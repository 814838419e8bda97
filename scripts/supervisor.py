"""Process supervision for ``make run`` (scripts/run.py): start, watch, restart, stop.

Every child runs in its own session/process group, so a signal to the group also reaches
whatever the child spawned, and a Ctrl-C in the terminal reaches only the supervisor, which
then stops the children in order. Their output is streamed with a ``[name]`` prefix.

Two phases:

- **startup** (until :meth:`Supervisor.supervise` is called): a child that exits is fatal
  and its last output is shown. What dies this early is nearly always a setting or a busy
  port, which a restart loop would only hide.
- **supervising**: a child that exits unexpectedly is restarted after a delay that doubles
  from 0.5 s up to 30 s, and starts over at 0.5 s once an incarnation has stayed up for 30 s.
  Each restart is logged with the exit code or signal and the delay. A child that keeps
  crashing costs one start per delay and nothing in between: the main loop only wakes ten
  times a second.

A requested stop (SIGINT, SIGTERM, SIGHUP) stops the children, highest layer first (the
worker, API and consumer together, then the Temporal server they talk to): SIGTERM to each
group, SIGKILL after a grace period or at a second signal.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from types import FrameType

STOP_GRACE_SECONDS = 10.0
TICK_SECONDS = 0.1

_out_lock = threading.Lock()


def write(text: str) -> None:
    # Never called from a signal handler (the lock is not reentrant). A closed stdout must not
    # stop the pump threads: they have to keep draining the children's pipes.
    with _out_lock, contextlib.suppress(OSError, ValueError):
        sys.stdout.write(text)
        sys.stdout.flush()


def say(msg: str) -> None:
    write("".join(f"[run] {line}\n" for line in msg.splitlines() or [""]))


class Stop(Exception):
    """A shutdown was requested (signal) or a child died at startup; unwinds ``run``."""


class Backoff:
    """Restart delays: ``initial`` doubling up to ``maximum``; reset by a long enough uptime."""

    def __init__(
        self, initial: float = 0.5, maximum: float = 30.0, reset_after: float = 30.0
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.reset_after = reset_after
        self._next = initial

    def delay(self, uptime: float) -> float:
        """The delay before the next start of a child that died after ``uptime`` seconds."""
        if uptime >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def describe_exit(code: int) -> str:
    return f"exited with code {code}" if code >= 0 else f"was killed by {signal_name(-code)}"


class Child:
    """A supervised command; each (re)start is a new process in a new process group."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path, layer: int
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.layer = layer
        self.tail: deque[str] = deque(maxlen=20)
        self.backoff = Backoff()
        self.restarts = 0
        self.stopping = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        # Set while the child is dead and waiting out its backoff.
        self.restart_at: float | None = None
        self._pump: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def spawn(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the child leads a new process group: pgid == pid
        )
        self.started_at = time.monotonic()
        self._pump = threading.Thread(
            target=self._stream, args=(self.proc,), name=f"pump-{self.name}", daemon=True
        )
        self._pump.start()

    def _stream(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        prefix = f"[{self.name}] "
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.tail.append(line)
            write(prefix + line + "\n")

    def poll(self) -> int | None:
        """The exit code of the current process; None while it runs, or when there is none."""
        return self.proc.poll() if self.proc is not None else None

    def tail_text(self) -> str:
        if self._pump is not None:
            self._pump.join(timeout=1.0)  # let the last lines of a dead child arrive
        return "\n".join(f"    {line}" for line in self.tail) or "    (no output)"

    def signal_group(self, sig: signal.Signals) -> None:
        # The group outlives its leader while a member lives, and its id is not reused then.
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        self.stopping = True
        self.restart_at = None
        if self.proc is not None and self.proc.poll() is None:
            say(f"stopping {self.name} (pid {self.proc.pid})")
            self.signal_group(signal.SIGTERM)

    def finish(self, why: str | None) -> None:
        """SIGKILL what is left of the group (``why`` says why if the leader still ran)."""
        if self.proc is None:
            return
        if why is not None and self.proc.poll() is None:
            say(f"{self.name}: {why}; killing it")
        self.signal_group(signal.SIGKILL)
        self.proc.wait()
        if self._pump is not None:
            self._pump.join(timeout=2.0)
        # Done with this incarnation: its pid (and group id) may now be reused by others.
        self.proc = None


class Supervisor:
    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.children: list[Child] = []
        self.stop_requested: str | None = None
        self.signals_seen = 0
        self.failed: str | None = None
        self.supervising = False

    # -- signals ----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only set flags here: the main loop notices them within a tick.
        self.signals_seen += 1
        if self.stop_requested is None:
            self.stop_requested = signal_name(signum)

    def hurry(self) -> bool:
        return self.signals_seen > 1

    # -- children ---------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], env: dict[str, str], layer: int = 1) -> Child:
        """Start a child; ``layer`` orders the stop (higher layers stop first)."""
        child = Child(name, argv, dict(env), self.cwd, layer)
        self.children.append(child)
        child.spawn()
        say(f"started {name} (pid {child.pid}): {shlex.join(argv)}")
        return child

    def supervise(self) -> None:
        """Startup is over: from now on a child that exits is restarted, not fatal."""
        self.supervising = True

    def check(self) -> None:
        """Raise ``Stop`` on a signal (or a death at startup); restart children that are due."""
        if self.stop_requested is not None:
            raise Stop(f"received {self.stop_requested}")
        now = time.monotonic()
        for child in self.children:
            if child.stopping:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._restart(child)
                continue
            code = child.poll()
            if code is None:
                continue
            if not self.supervising:
                self.failed = (
                    f"{child.name} {describe_exit(code)} while starting; last output:\n"
                    f"{child.tail_text()}"
                )
                raise Stop(self.failed)
            self._schedule_restart(child, code, now)

    def _schedule_restart(self, child: Child, code: int, now: float) -> None:
        uptime = now - child.started_at
        pid = child.pid
        child.finish(None)  # reap it, and kill what it left in its group
        delay = child.backoff.delay(uptime)
        child.restart_at = time.monotonic() + delay
        say(
            f"{child.name} (pid {pid}) {describe_exit(code)} after {uptime:.1f}s; "
            f"restarting it in {delay:g}s"
        )

    def _restart(self, child: Child) -> None:
        child.restart_at = None
        child.restarts += 1
        try:
            child.spawn()
        except OSError as exc:  # e.g. the binary went away; try again later
            delay = child.backoff.delay(0.0)
            child.proc = None
            child.restart_at = time.monotonic() + delay
            say(f"cannot restart {child.name}: {exc}; trying again in {delay:g}s")
            return
        say(f"restarted {child.name} (pid {child.pid}, restart {child.restarts})")

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, TICK_SECONDS))

    def stop_all(self) -> None:
        """Stop every child, a layer at a time (highest first), the children of a layer at once."""
        for layer in sorted({c.layer for c in self.children}, reverse=True):
            group = [c for c in self.children if c.layer == layer]
            self._stop_layer(group, 0.0 if self.hurry() else STOP_GRACE_SECONDS)
        if self.children:
            say("all processes stopped")

    def _stop_layer(self, group: list[Child], grace: float) -> None:
        for child in group:
            child.terminate()
        deadline = time.monotonic() + grace
        while (
            any(c.poll() is None and c.proc is not None for c in group)
            and time.monotonic() < deadline
            and not self.hurry()
        ):
            time.sleep(TICK_SECONDS)
        why = "second signal" if self.hurry() else f"still running after {grace:g}s"
        for child in group:
            child.finish(why)
