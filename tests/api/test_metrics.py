"""/metrics: Prometheus's text format, with Herald's own counters."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Herald, unique


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
