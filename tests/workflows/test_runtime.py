from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from workflows import notification
from workflows.runtime import ALL_QUEUES, cache_workflow_bytecode, parse_queues


def test_parse_queues() -> None:
    assert parse_queues(None) == list(ALL_QUEUES)
    assert parse_queues("email, sms,email") == ["email", "sms"]
    with pytest.raises(ValueError, match="fax"):
        parse_queues("email,fax")
    with pytest.raises(ValueError):
        parse_queues(" , ")


def test_workflow_bytecode_is_cached_for_the_sandbox() -> None:
    """The sandbox re-imports workflow modules per execution; they must not be recompiled."""
    source = str(Path(notification.__file__))
    cached = Path(importlib.util.cache_from_source(source))
    cached.unlink(missing_ok=True)  # as under PYTHONDONTWRITEBYTECODE=1
    cache_workflow_bytecode()
    assert cached.exists()
