"""The pacer hands out slots 1/rate apart, so one process never sends a burst."""

from __future__ import annotations

import threading
import time

import pytest

from activities.pacing import Pacer


def test_back_to_back_reservations_are_one_interval_apart() -> None:
    pacer = Pacer(per_second=5)
    before = time.monotonic()
    slots = [pacer.reserve() for _ in range(6)]
    assert slots[0] == pytest.approx(before, abs=0.05)  # the first goes at once
    assert [b - a for a, b in zip(slots, slots[1:], strict=False)] == pytest.approx([0.2] * 5)


def test_concurrent_callers_never_share_a_slot() -> None:
    pacer = Pacer(per_second=1000)
    slots: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        slot = pacer.reserve()
        with lock:
            slots.append(slot)

    threads = [threading.Thread(target=take) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slots.sort()
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert len(slots) == 50
    assert min(gaps) >= 0.001 - 1e-9


def test_wait_sleeps_until_the_slot() -> None:
    pacer = Pacer(per_second=20)
    pacer.wait()
    start = time.monotonic()
    pacer.wait()
    assert time.monotonic() - start >= 0.05 - 0.005


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(per_second=0)
