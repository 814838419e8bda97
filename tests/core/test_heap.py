"""The startup heap is frozen out of full collections (core.heap), in the API too."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from core.heap import freeze_startup_heap
from tests.conftest import HeraldFactory


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process builds many apps; keep them collectable


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_objects_alive_at_startup_are_frozen_and_later_ones_collected(unfrozen: None) -> None:
    before = Cycle()
    frozen = freeze_startup_heap()
    assert frozen > 1000  # the count falls as other threads free frozen objects
    assert not any(o is before for o in gc.get_objects())  # skipped by every pass
    later = Cycle()
    assert any(o is later for o in gc.get_objects())
    del later
    assert gc.collect() >= 1  # the collector still frees what was made after startup


def test_off_freezes_nothing(unfrozen: None) -> None:
    assert freeze_startup_heap(enabled=False) == 0
    assert gc.get_freeze_count() == 0


async def test_the_api_freezes_its_heap_once_started(
    unfrozen: None, herald_factory: HeraldFactory
) -> None:
    herald = await herald_factory(gc_freeze=True)
    assert herald.app.state.frozen_objects > 1000
    assert gc.get_freeze_count() > 1000  # fewer than frozen: reference counting still frees
    assert (await herald.http.get("/healthz")).status_code in (200, 503)
