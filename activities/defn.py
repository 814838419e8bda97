"""How Herald declares its activities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from temporalio import activity

F = TypeVar("F", bound=Callable[..., Any])


def uninterrupted(name: str) -> Callable[[F], F]:
    """``activity.defn`` for short database and provider work: it runs to its end.

    On cancellation (a worker's shutdown, at every deploy) the SDK otherwise raises
    CancelledError into the activity's thread wherever it happens to be: after the
    provider accepted a send but before it was recorded (sent again on retry; tested), or
    between taking SQLite's write lock and noting it, which would hold the lock for good
    (the likely cause of a test teardown that hung waiting for it).
    """
    return activity.defn(name=name, no_thread_cancel_exception=True)
