"""Dependencies that only read app.state run on the event loop, not in the thread pool."""

from __future__ import annotations

import inspect

import pytest

from api import deps
from api.routes import tracking


@pytest.mark.parametrize(
    "dependency",
    [
        deps.get_settings,
        deps.get_engine,
        deps.get_gateway,
        deps.get_dispatcher,
        deps.get_commits,
        tracking._recorder,
    ],
)
def test_state_readers_are_coroutines_so_fastapi_gives_them_no_thread(dependency: object) -> None:
    # A plain ``def`` would cost each request a thread-pool round trip (make bench, burst).
    assert inspect.iscoroutinefunction(dependency)
