"""The ceiling: one workflow running one activity that makes one HTTP POST."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    import httpx


@dataclass
class RawInput:
    url: str
    seq: int
    # Run the activity on another task queue, as Herald's per-channel queues do; this
    # rules out eager activity dispatch, so it is the ceiling for that design.
    activity_queue: str | None = None


_http: httpx.AsyncClient | None = None


@activity.defn(name="raw_post")
async def raw_post(inp: RawInput) -> None:
    global _http
    if _http is None:
        _http = httpx.AsyncClient(timeout=30)
    r = await _http.post(inp.url, json={"seq": inp.seq})
    r.raise_for_status()


@workflow.defn(name="RawWorkflow")
class RawWorkflow:
    @workflow.run
    async def run(self, inp: RawInput) -> None:
        await workflow.execute_activity(
            raw_post,
            inp,
            task_queue=inp.activity_queue,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=5),
        )
