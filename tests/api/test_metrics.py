"""/metrics: Prometheus's text format, with Herald's own counters."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Herald, HeraldFactory, unique
from tests.fakes.provider import FakeProvider, twilio_error_body
from tests.workflows.test_notification import visible


async def scrape(herald: Herald) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await herald.http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


async def test_accepted_events_are_counted_by_tenant_and_type_and_repeats_are_not(
    herald: Herald,
) -> None:
    sub, type_ = unique("u"), unique("metric.test").replace("-", ".")
    await herald.put_subscriber(sub, email="m@example.com")
    key = ("herald_events_accepted_total", (("tenant", herald.tenant), ("type", type_)))
    before = await scrape(herald)
    body = {"type": type_, "to": [sub], "idempotency_key": unique("k")}
    assert (await herald.http.post("/v1/events", json=body)).status_code == 202
    assert (await herald.http.post("/v1/events", json=body)).status_code == 200  # a repeat
    after = await scrape(herald)
    assert key not in before
    assert after[key] == 1
    statements = ("herald_db_statements_total", ())
    commits = ("herald_db_transactions_total", (("outcome", "commit"),))
    assert after[statements] > before.get(statements, 0)
    assert after[commits] > before.get(commits, 0)


def _sum(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= set(lbls))


async def test_deliveries_provider_latency_outbox_lag_and_dead_letters(
    herald_factory: HeraldFactory, fresh_provider: FakeProvider
) -> None:
    herald = await herald_factory(dead_letter_retention=600)
    ok, bad = unique("u"), unique("u")
    await herald.put_subscriber(ok, email=f"{ok}@example.com")
    await herald.put_subscriber(bad, phone="+14155550100")
    await herald.put_flow(
        "m", event_type="metric.mixed", steps=[{"channel": "email", "text": "x", "subject": "s"}]
    )
    await herald.put_flow("o", event_type="metric.otp", steps=[{"channel": "sms", "text": "x"}])
    fresh_provider.fail("twilio", 400, body=twilio_error_body(21211, "Invalid 'To' Phone Number"))
    before = await scrape(herald)

    await herald.wait_event((await herald.publish(type="metric.mixed", to=[ok]))["id"])
    failed = await herald.publish(type="metric.otp", to=[bad])
    await herald.wait_dispatched(failed["id"])
    await visible(
        herald.client,
        f'WorkflowId="{failed["notifications"][0]["workflow_id"]}" AND HeraldStatus="failed"',
        1,
    )
    after = await scrape(herald)

    def grew(name: str, **labels: str) -> float:
        return _sum(after, name, **labels) - _sum(before, name, **labels)

    sent = {"channel": "email", "provider": "sendgrid", "status": "sent"}
    assert grew("herald_deliveries_total", **sent) == 1
    assert grew("herald_deliveries_total", channel="sms", provider="twilio", status="failed") == 1
    assert grew("herald_provider_call_seconds_count", channel="email", outcome="ok") == 1
    assert grew("herald_provider_call_seconds_count", channel="sms", outcome="permanent") == 1
    assert grew("herald_outbox_lag_seconds_count") >= 2
    # The SMS waits as a dead letter (retention 600 s); other tests' rows may count too.
    assert _sum(after, "herald_dead_letters_waiting", channel="sms") >= 1
