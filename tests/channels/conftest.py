"""Fixtures for the adapter tests: one fake provider server per session, reset per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channels.base import Content, Message
from core.settings import Settings
from core.types import Channel
from tests.fakes.provider import FakeProvider


@pytest.fixture(scope="session")
def _provider_server() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def provider(_provider_server: FakeProvider) -> Iterator[FakeProvider]:
    _provider_server.reset()
    yield _provider_server
    _provider_server.reset()


@pytest.fixture
def make_settings(provider: FakeProvider, tmp_path: Path) -> Any:
    """``make_settings(**overrides)``: Settings pointing every provider at the fake."""

    def make(**overrides: Any) -> Settings:
        kwargs = {"env": "test", **provider.settings_overrides(tmp_path), **overrides}
        return Settings(**kwargs)

    return make


@pytest.fixture
def settings(make_settings: Any) -> Settings:
    settings: Settings = make_settings()
    return settings


def _make_message(channel: Channel, to: tuple[str, ...], content: Content) -> Message:
    return Message(
        delivery_id=f"dlv_{uuid.uuid4().hex}",
        tenant_id=f"ten_{uuid.uuid4().hex[:8]}",
        channel=channel,
        to=to,
        content=content,
    )


@pytest.fixture
def make_message() -> Any:
    """``make_message(channel, to, content)``: a Message with fresh, unique ids."""
    return _make_message
