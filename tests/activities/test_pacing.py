"""The pacer lets calls go one interval apart, so one process never sends a burst."""

from __future__ import annotations

import threading
import time

import pytest

from activities.pacing import Pacer


def test_back_to_back_calls_are_one_interval_apart() -> None:
    pacer = Pacer(per_second=50)
    before = time.monotonic()
    turns = [pacer.wait() for _ in range(6)]
    assert turns[0] == pytest.approx(before, abs=0.05)  # the first goes at once
    assert all(b - a >= 0.02 for a, b in zip(turns, turns[1:], strict=False))


def test_concurrent_callers_never_share_a_turn() -> None:
    pacer = Pacer(per_second=1000)
    turns: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        turn = pacer.wait()
        with lock:
            turns.append(turn)

    threads = [threading.Thread(target=take) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    turns.sort()
    gaps = [b - a for a, b in zip(turns, turns[1:], strict=False)]
    assert len(turns) == 50
    assert min(gaps) >= 0.001 - 1e-9


def test_callers_that_wake_late_together_still_go_one_interval_apart() -> None:
    """A stall makes two waiters overdue at once: the second still waits its interval."""
    pacer = Pacer(per_second=20)
    first = pacer.wait()
    time.sleep(0.12)  # a stall: the next turn is long overdue
    second, third = pacer.wait(), pacer.wait()
    assert second - first >= 0.05
    assert third - second >= 0.05 - 1e-9


def test_wait_sleeps_until_the_turn() -> None:
    pacer = Pacer(per_second=20)
    pacer.wait()
    start = time.monotonic()
    pacer.wait()
    assert time.monotonic() - start >= 0.05 - 0.005


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(per_second=0)
