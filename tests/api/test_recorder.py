"""Pixel and click hits are recorded off the request path: batched, retried, drained."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

import api.recorder
from api.main import create_app
from api.recorder import ObservationRecorder
from core.lifecycle import Kind, Observation, Source
from store.lifecycle import Recorded
from tests.api.test_tracking import assert_pixel, email_step, links_in, path, run_flow, sent_html
from tests.conftest import Herald
from tests.fakes.provider import FakeProvider


async def tracked_mail(herald: Herald, provider: FakeProvider) -> tuple[dict[str, Any], str, str]:
    """One sent email: its delivery, its pixel path and its click path."""
    (d,) = await run_flow(herald, [email_step()])
    html, _ = sent_html(provider)
    (pixel,) = links_in(herald, html, "/t/o/")
    (click,) = links_in(herald, html, "/t/c/")
    return d, path(herald, pixel), path(herald, click)


def opens(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in detail["timeline"] if (e["status"], e["source"]) == ("opened", "pixel")]


async def test_a_burst_of_pixel_hits_is_written_in_few_batches(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    recorder: ObservationRecorder = herald.app.state.recorder
    d, pixel, _ = await tracked_mail(herald, fresh_provider)
    before = (recorder.recorded, recorder.batches)

    hits = await asyncio.gather(*(herald.http.get(pixel) for _ in range(300)))
    for r in hits:
        assert_pixel(r)
    await recorder.flush()

    assert recorder.recorded - before[0] == 300
    assert 1 <= recorder.batches - before[1] < 300
    assert recorder.inline == 0
    detail = await herald.delivery(d["id"])
    assert detail["status"] == "opened"
    # Every hit is a row on the timeline; the delivery reached "opened" once.
    assert len(opens(detail)) == 300
    first_open = min(e["occurred_at"] for e in opens(detail))
    assert detail["opened_at"] is not None and detail["opened_at"][:19] == first_open[:19]
    r = await herald.http.get("/v1/analytics", params={"flow": detail["flow"], "group_by": "flow"})
    assert r.status_code == 200, r.text
    totals = r.json()["totals"]
    assert (totals["sent"], totals["opened"], totals["clicked"]) == (1, 1, 0)


async def test_a_hit_during_a_database_outage_is_recorded_once_it_is_back(
    herald: Herald, fresh_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder: ObservationRecorder = herald.app.state.recorder
    d, _, click = await tracked_mail(herald, fresh_provider)
    real = api.recorder.record_batch
    calls: list[int] = []

    def down_once(engine: Any, observations: list[Observation]) -> Recorded:
        calls.append(len(observations))
        if len(calls) == 1:
            raise OperationalError("BEGIN", {}, Exception("database is down"))
        return real(engine, observations)

    monkeypatch.setattr(api.recorder, "record_batch", down_once)
    failures = recorder.failures

    r = await herald.http.get(click)
    assert r.status_code == 302  # the reader is redirected whatever the database does
    await recorder.flush()

    assert recorder.failures - failures == 1
    assert calls == [1, 1]  # the same batch, retried
    detail = await herald.delivery(d["id"])
    assert detail["status"] == "clicked"
    assert [c["source"] for c in detail["clicks"]] == ["link"]  # recorded once


async def test_shutdown_records_what_is_still_queued(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    d, _, _ = await tracked_mail(herald, fresh_provider)
    app = create_app(herald.settings, client=herald.client)
    async with app.router.lifespan_context(app):
        recorder: ObservationRecorder = app.state.recorder
        for source in (Source.PIXEL, Source.APP):
            await recorder.submit(Observation(Kind.OPENED, source, d["id"]))
        # Nothing yielded to the writer yet: both hits are only in the queue.
        assert (recorder.queued, recorder.recorded, recorder.queue.qsize()) == (2, 0, 2)
    assert (recorder.recorded, recorder.batches) == (2, 1)

    detail = await herald.delivery(d["id"])
    assert detail["status"] == "opened"
    assert {e["source"] for e in detail["timeline"] if e["status"] == "opened"} == {"pixel", "app"}


async def test_a_full_queue_records_in_the_request(
    herald: Herald, fresh_provider: FakeProvider
) -> None:
    d, _, _ = await tracked_mail(herald, fresh_provider)
    gateway = herald.app.state.temporal
    recorder = ObservationRecorder(herald.engine, gateway, max_queue=1)  # not started
    await recorder.submit(Observation(Kind.OPENED, Source.PIXEL, d["id"]))
    await recorder.submit(Observation(Kind.OPENED, Source.APP, d["id"]))
    assert (recorder.queued, recorder.inline) == (1, 1)
    detail = await herald.delivery(d["id"])
    assert [e["source"] for e in detail["timeline"] if e["status"] == "opened"] == ["app"]
    await recorder.start()
    await recorder.stop()
    detail = await herald.delivery(d["id"])
    assert sorted(e["source"] for e in detail["timeline"] if e["status"] == "opened") == [
        "app",
        "pixel",
    ]
