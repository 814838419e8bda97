"""Recorded histories replay on today's workflow code: a deploy must not break a running one.

A change that reorders commands without ``workflow.patched`` fails here with a
non-determinism error, in CI, instead of in production after the deploy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.histories import HERE
from workflows.runtime import WORKFLOW_TYPES

HISTORIES = sorted(HERE.rglob("*.json"))


def _workflow_type(path: Path) -> str:
    started = json.loads(path.read_text())["events"][0]
    return started["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]


def _history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def test_every_workflow_type_has_recorded_histories() -> None:
    recorded = {_workflow_type(p) for p in HISTORIES}
    assert recorded == {workflow._Definition.must_from_class(w).name for w in WORKFLOW_TYPES}


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: str(p.relative_to(HERE)))
async def test_recorded_history_replays(path: Path) -> None:
    history = _history(path)
    replayer = Replayer(workflows=list(WORKFLOW_TYPES), data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure!r}"
