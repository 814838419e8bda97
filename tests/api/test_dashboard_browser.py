"""The dashboard in a real browser: Debian's chromium, driven by Playwright, over real data.

The app is served by uvicorn on a free 127.0.0.1 port (a browser cannot use the ASGI
client), on the same database and Temporal as the ``herald`` fixture that seeds it.
Without chromium the test skips, but fails when ``CI`` is set: CI must run it.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn

from api.main import create_app
from core.settings import Settings
from store.rollups import COUNTERS
from tests.api.test_analytics import TOTALS, seed
from tests.conftest import Herald
from tests.fakes.provider import FakeProvider

CHROMIUM = "/usr/bin/chromium"
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


def require_browser() -> None:
    """Skip without chromium or Playwright, unless in CI, where that is a failure."""
    missing = None
    if not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed"
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {missing}")
    pytest.skip(missing)


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The real app under uvicorn in a background thread; yields its base URL."""
    app = create_app(settings)  # connects to Temporal by itself, in the server's loop
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


async def texts(page: Any, selector: str, attribute: str = "data-value") -> list[str]:
    values: list[str] = await page.eval_on_selector_all(
        selector, f"els => els.map(e => e.getAttribute('{attribute}'))"
    )
    return values


async def test_dashboard_shows_the_api_numbers_in_chromium(
    herald: Herald, fresh_provider: FakeProvider, tmp_path: Path
) -> None:
    require_browser()
    from playwright.async_api import async_playwright

    await seed(herald, fresh_provider)
    api = (await herald.http.get("/v1/analytics", params={"group_by": "flow"})).json()
    assert {c: api["totals"][c] for c in COUNTERS} == TOTALS
    failed = (await herald.http.get("/v1/deliveries", params={"status": "failed"})).json()
    assert len(failed) == 1
    key = herald.api_key

    with serve(herald.settings) as base:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = await browser.new_page(viewport={"width": 1440, "height": 1100})
                problems: list[str] = []
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on(
                    "console",
                    lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None,
                )
                requests: list[Any] = []
                page.on("request", lambda r: requests.append(r))

                # The page loads without a key and asks for one.
                response = await page.goto(f"{base}/dashboard")
                assert response is not None and response.status == 200
                await page.wait_for_selector("body[data-state='signed-out']")
                assert await page.is_visible("#api-key")

                # A wrong key is refused and forgotten.
                await page.fill("#api-key", "not-a-key")
                await page.click("#signin-form button[type=submit]")
                await page.wait_for_selector("#signin-error:not([hidden])")
                assert await page.evaluate("sessionStorage.getItem('herald.apiKey')") is None

                await page.fill("#api-key", key)
                await page.click("#signin-form button[type=submit]")
                await page.wait_for_selector("body[data-state='ready']", timeout=20_000)

                # Totals, rates and latency as the API computes them.
                t = api["totals"]
                for field in COUNTERS:
                    shown = await page.get_attribute(f"[data-testid='total-{field}']", "data-value")
                    assert shown == str(t[field]), field
                    assert await page.inner_text(f"[data-testid='total-{field}']") == str(t[field])
                for testid, field in (
                    ("rate-delivery", "delivery_rate"),
                    ("rate-open", "open_rate"),
                    ("rate-click", "click_rate"),
                    ("rate-click-to-open", "click_to_open_rate"),
                ):
                    shown = await page.get_attribute(f"[data-testid='{testid}']", "data-value")
                    assert float(shown or "nan") == pytest.approx(t[field]), testid
                    label = await page.inner_text(f"[data-testid='{testid}']")
                    assert label == f"{t[field] * 100:.1f}%"
                for q in ("p50", "p95"):
                    shown = await page.get_attribute(f"[data-testid='latency-{q}']", "data-value")
                    assert float(shown or "nan") == pytest.approx(t["latency_ms"][q])

                # Per-flow funnel rows and the channel and provider breakdowns.
                rows = await texts(page, "#flows-body tr", "data-key")
                assert rows == [g["key"] for g in api["groups"]]
                for g in api["groups"]:
                    for field in ("sent", "delivered", "opened", "clicked"):
                        cell = f"#flows-body tr[data-key='{g['key']}'] td[data-field='{field}']"
                        assert await page.get_attribute(cell, "data-value") == str(g[field])
                for group_by in ("channel", "provider"):
                    report = await herald.http.get("/v1/analytics", params={"group_by": group_by})
                    want = {g["key"]: str(g["sent"]) for g in report.json()["groups"]}
                    keys = await texts(page, f"#{group_by}s-body tr", "data-key")
                    sent = await texts(page, f"#{group_by}s-body td[data-field='sent']")
                    assert dict(zip(keys, sent, strict=True)) == want

                # The charts are drawn by Chart.js from the same numbers.
                sums = await page.evaluate(
                    """() => Object.fromEntries(
                        ['chart-timeline', 'chart-funnel', 'chart-channels'].map(id => {
                          const chart = Chart.getChart(id);
                          return [id, chart ? chart.data.datasets.map(
                            d => d.data.reduce((a, b) => a + b, 0)) : null];
                        }))"""
                )
                assert sums["chart-timeline"][:4] == [t["sent"], t["delivered"], t["opened"], 1]
                assert sums["chart-funnel"] == [t["sent"], t["delivered"], t["opened"], 1]
                assert sums["chart-channels"][:2] == [t["sent"], t["delivered"]]

                # Reasons, and the failed delivery linked to its workflow in the Temporal UI.
                assert len(await texts(page, "#reasons-body td[data-field='count']")) == 3
                (row,) = failed
                ui, ns = herald.settings.temporal_ui_base, herald.settings.temporal_namespace
                href = await page.get_attribute(
                    f"#failed-body tr[data-delivery-id='{row['delivery_id']}'] "
                    "a[data-testid='workflow-link']",
                    "href",
                )
                wf = quote(row["workflow_id"], safe="!~*'()")
                assert href == f"{ui}/namespaces/{quote(ns, safe='')}/workflows/{wf}"
                assert "%2F" in href  # the workflow id's slashes are encoded

                # The key lives in the tab's session and headers only, never in a URL.
                assert await page.evaluate("sessionStorage.getItem('herald.apiKey')") == key
                assert await page.evaluate("localStorage.length") == 0
                assert key not in page.url
                api_calls = [r for r in requests if "/v1/" in r.url]
                assert api_calls and all(key not in r.url for r in requests)
                auth = {(await r.all_headers()).get("authorization") for r in api_calls}
                assert f"Bearer {key}" in auth

                shot = tmp_path / "dashboard.png"
                await page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                if os.environ.get("HERALD_UPDATE_SCREENSHOT"):  # the README's picture
                    README_SCREENSHOT.parent.mkdir(exist_ok=True)
                    shutil.copyfile(shot, README_SCREENSHOT)

                # A reload keeps the session; signing out forgets the key.
                await page.reload()
                await page.wait_for_selector("body[data-state='ready']", timeout=20_000)
                await page.click("#sign-out")
                await page.wait_for_selector("body[data-state='signed-out']")
                assert await page.evaluate("sessionStorage.getItem('herald.apiKey')") is None
                refused = [p for p in problems if "401" not in p]
                assert refused == [], refused
            finally:
                await browser.close()


async def test_dashboard_assets_are_served_from_the_package(herald: Herald) -> None:
    r = await herald.http.get("/dashboard", headers={"Authorization": ""})
    assert r.status_code == 200
    assert "default-src 'none'" in r.headers["content-security-policy"]
    ui = herald.settings.temporal_ui_base
    assert f'name="herald-temporal-ui" content="{ui}"' in r.text
    assert "__HERALD" not in r.text and "https://" not in r.text  # no CDN, nothing injected left
    js = await herald.http.get("/dashboard/static/vendor/chart.umd.min.js")
    assert js.status_code == 200 and js.text.startswith("/*!\n * Chart.js v4.6.1")
    assert js.headers["content-type"].startswith("text/javascript")
    for path in ("dashboard.js", "dashboard.css"):
        assert (await herald.http.get(f"/dashboard/static/{path}")).status_code == 200
    for path in ("../routes/dashboard.py", "index.html", "vendor/README", "%2e%2e/main.py"):
        assert (await herald.http.get(f"/dashboard/static/{path}")).status_code == 404
