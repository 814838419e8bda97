"""Recorded workflow histories that every change must still replay (see test_replay.py).

``HERALD_RECORD_HISTORIES=<folder> pytest tests/workflows tests/api/test_broadcasts.py``
writes the histories named by the scenario tests into ``tests/histories/<folder>/`` (name
the folder after the commit recorded). The replay test reads every ``*.json`` below here.
Keep old folders when the code changes: they stand for executions still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from temporalio.client import Client

HERE = Path(__file__).parent
RECORD_ENV = "HERALD_RECORD_HISTORIES"


async def keep_history(client: Client, workflow_id: str, name: str) -> None:
    """Save the closed execution's history as ``<name>.json`` when recording is on."""
    if not os.environ.get(RECORD_ENV):
        return
    handle = client.get_workflow_handle(workflow_id)
    # A closed history is the whole path; one still open (a dead letter waiting for its
    # retry) stands for an execution running during a deploy, which must replay too.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(handle.result(), 10)
    history = await handle.fetch_history()
    folder = HERE / os.environ[RECORD_ENV]
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(history.to_json())


async def keep_first(client: Client, query: str, name: str) -> None:
    """Like ``keep_history`` for a workflow the test knows only by a visibility query."""
    if not os.environ.get(RECORD_ENV):
        return
    for _ in range(100):  # visibility is eventually consistent
        async for execution in client.list_workflows(query):
            await keep_history(client, execution.id, name)
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no workflow matches {query!r}")
