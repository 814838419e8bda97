/* Herald dashboard: reads the JSON API with the key held in sessionStorage.
 *
 * The key never goes into a URL: it is sent only as "Authorization: Bearer".
 * Every value from the API is written with textContent (never innerHTML).
 * document.body.dataset.state tells tests (and people) where the page is:
 * signed-out, loading, ready or error.
 */
(function () {
  "use strict";

  const KEY = "herald.apiKey";
  const RANGES = {
    "24h": { hours: 24, groupBy: "hour" },
    "7d": { hours: 24 * 7, groupBy: "day" },
    "30d": { hours: 24 * 30, groupBy: "day" },
  };
  const COLORS = {
    sent: "#8ea4c8",
    delivered: "#2f6fed",
    opened: "#17a589",
    clicked: "#f0a202",
    bounced: "#e07a5f",
    failed: "#c93c3c",
  };
  const meta = (name) => {
    const el = document.querySelector(`meta[name="${name}"]`);
    return el ? el.content : "";
  };
  const TEMPORAL_UI = meta("herald-temporal-ui").replace(/\/+$/, "");
  const NAMESPACE = meta("herald-temporal-namespace") || "default";
  const $ = (id) => document.getElementById(id);
  const charts = {};
  const number = new Intl.NumberFormat("en-US");

  class Unauthorized extends Error {}

  function setState(state) {
    document.body.dataset.state = state;
  }

  function apiKey() {
    return sessionStorage.getItem(KEY);
  }

  async function api(path, params) {
    const query = new URLSearchParams(params || {}).toString();
    const response = await fetch(query ? `${path}?${query}` : path, {
      headers: { Authorization: `Bearer ${apiKey()}`, Accept: "application/json" },
      cache: "no-store",
    });
    if (response.status === 401) throw new Unauthorized("the API key was refused");
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  // --- formatting -----------------------------------------------------------------

  function fmtCount(n) {
    return number.format(n);
  }

  function fmtRate(r) {
    return r === null || r === undefined ? "–" : `${(r * 100).toFixed(1)}%`;
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return `${(ms / 60000).toFixed(1)} min`;
  }

  function setValue(testId, text, raw) {
    const el = document.querySelector(`[data-testid="${testId}"]`);
    el.textContent = text;
    el.dataset.value = raw === null || raw === undefined ? "" : String(raw);
  }

  function cell(row, text, cls, raw) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    if (raw !== undefined) td.dataset.value = raw === null ? "" : String(raw);
    row.appendChild(td);
    return td;
  }

  function fillTable(bodyId, items, columns, empty) {
    const body = $(bodyId);
    body.replaceChildren();
    if (!items.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell(tr, empty);
      td.colSpan = columns;
      body.appendChild(tr);
      return [];
    }
    return items.map((item) => {
      const tr = document.createElement("tr");
      body.appendChild(tr);
      return [tr, item];
    });
  }

  // --- charts ---------------------------------------------------------------------

  function draw(id, config) {
    if (charts[id]) charts[id].destroy();
    config.options = Object.assign(
      {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: {
            position: "bottom",
            labels: { boxWidth: 12, sort: (a, b) => a.datasetIndex - b.datasetIndex },
          },
        },
      },
      config.options || {}
    );
    charts[id] = new window.Chart($(id), config);
  }

  function series(groups, field) {
    return groups.map((g) => g[field]);
  }

  function timeLabel(key, groupBy) {
    // Days as "Nov 24", hours as "24 Nov 13:00" (UTC, as the API buckets them).
    const at = new Date(groupBy === "day" ? `${key}T00:00:00Z` : key);
    const opts = { timeZone: "UTC", month: "short", day: "numeric" };
    if (groupBy === "hour") Object.assign(opts, { hour: "2-digit", minute: "2-digit", hour12: false });
    return at.toLocaleString("en-GB", opts);
  }

  function drawTimeline(report) {
    const groups = report.groups;
    const line = (label, field) => ({
      type: "line", label, data: series(groups, field), borderColor: COLORS[field],
      backgroundColor: COLORS[field], cubicInterpolationMode: "monotone", pointRadius: 2,
    });
    draw("chart-timeline", {
      type: "bar",
      data: {
        labels: groups.map((g) => timeLabel(g.key, report.group_by)),
        datasets: [
          { label: "Sent", data: series(groups, "sent"), backgroundColor: COLORS.sent, order: 2 },
          line("Delivered", "delivered"),
          line("Opened", "opened"),
          line("Clicked", "clicked"),
          {
            label: "Bounced + failed",
            data: groups.map((g) => g.bounced + g.failed),
            backgroundColor: COLORS.failed,
            order: 3,
          },
        ],
      },
      options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
  }

  function drawFunnel(report) {
    const groups = report.groups;
    draw("chart-funnel", {
      type: "bar",
      data: {
        labels: groups.map((g) => g.key),
        datasets: ["sent", "delivered", "opened", "clicked"].map((f) => ({
          label: f[0].toUpperCase() + f.slice(1),
          data: series(groups, f),
          backgroundColor: COLORS[f],
        })),
      },
      options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
    for (const [tr, g] of fillTable("flows-body", groups, 8, "No sends in this window")) {
      tr.dataset.key = g.key;
      cell(tr, g.key);
      for (const f of ["sent", "delivered", "opened", "clicked"]) {
        cell(tr, fmtCount(g[f]), "num", g[f]).dataset.field = f;
      }
      for (const f of ["delivery_rate", "open_rate", "click_rate"]) {
        cell(tr, fmtRate(g[f]), "num", g[f]).dataset.field = f;
      }
    }
  }

  function breakdownTable(bodyId, groups, label) {
    for (const [tr, g] of fillTable(bodyId, groups, 8, "No sends in this window")) {
      tr.dataset.key = g.key;
      cell(tr, label(g.key));
      for (const f of ["sent", "delivered", "bounced", "failed"]) {
        cell(tr, fmtCount(g[f]), "num", g[f]).dataset.field = f;
      }
      cell(tr, fmtRate(g.delivery_rate), "num", g.delivery_rate).dataset.field = "delivery_rate";
      cell(tr, fmtMs(g.latency_ms.p50), "num", g.latency_ms.p50).dataset.field = "p50";
      cell(tr, fmtMs(g.latency_ms.p95), "num", g.latency_ms.p95).dataset.field = "p95";
    }
  }

  function drawChannels(channels, providers) {
    const groups = channels.groups;
    draw("chart-channels", {
      type: "bar",
      data: {
        labels: groups.map((g) => g.key),
        datasets: ["sent", "delivered", "bounced", "failed"].map((f) => ({
          label: f[0].toUpperCase() + f.slice(1),
          data: series(groups, f),
          backgroundColor: COLORS[f],
        })),
      },
      options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
    breakdownTable("channels-body", groups, (k) => k);
    breakdownTable("providers-body", providers.groups, (k) => k || "(none)");
  }

  // --- tables and totals -----------------------------------------------------------

  function showTotals(report) {
    const t = report.totals;
    for (const f of ["sent", "delivered", "opened", "clicked", "bounced", "failed",
      "unsubscribed", "complained"]) {
      setValue(`total-${f}`, fmtCount(t[f]), t[f]);
    }
    setValue("rate-delivery", fmtRate(t.delivery_rate), t.delivery_rate);
    setValue("rate-open", fmtRate(t.open_rate), t.open_rate);
    setValue("rate-click", fmtRate(t.click_rate), t.click_rate);
    setValue("rate-click-to-open", fmtRate(t.click_to_open_rate), t.click_to_open_rate);
    setValue("latency-p50", fmtMs(t.latency_ms.p50), t.latency_ms.p50);
    setValue("latency-p95", fmtMs(t.latency_ms.p95), t.latency_ms.p95);
  }

  function showReasons(report) {
    for (const [tr, r] of fillTable("reasons-body", report.reasons, 3, "Nothing failed")) {
      cell(tr, r.status);
      cell(tr, r.reason, "reason");
      cell(tr, fmtCount(r.count), "num", r.count).dataset.field = "count";
    }
  }

  function workflowUrl(workflowId) {
    return `${TEMPORAL_UI}/namespaces/${encodeURIComponent(NAMESPACE)}` +
      `/workflows/${encodeURIComponent(workflowId)}`;
  }

  function showFailed(rows) {
    for (const [tr, d] of fillTable("failed-body", rows, 6, "No failed deliveries")) {
      tr.dataset.deliveryId = d.delivery_id;
      cell(tr, d.updated_at.replace("T", " ").slice(0, 19));
      cell(tr, d.flow);
      cell(tr, d.subscriber_id, "reason");
      cell(tr, d.provider ? `${d.channel} · ${d.provider}` : d.channel);
      cell(tr, d.reason || "–", "reason");
      const link = document.createElement("a");
      link.href = workflowUrl(d.workflow_id);
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.textContent = "Temporal ↗";
      link.title = d.workflow_id;
      link.dataset.testid = "workflow-link";
      cell(tr, "").appendChild(link);
    }
  }

  // --- flow -----------------------------------------------------------------------

  async function load() {
    const range = RANGES[$("range").value] || RANGES["7d"];
    const until = new Date();
    const since = new Date(until.getTime() - range.hours * 3600 * 1000);
    const span = { since: since.toISOString(), until: until.toISOString() };
    setState("loading");
    $("load-error").hidden = true;
    try {
      const [timeline, flows, channels, providers, reasons, failed] = await Promise.all([
        api("/v1/analytics", { ...span, group_by: range.groupBy }),
        api("/v1/analytics", { ...span, group_by: "flow" }),
        api("/v1/analytics", { ...span, group_by: "channel" }),
        api("/v1/analytics", { ...span, group_by: "provider" }),
        api("/v1/analytics/reasons", { ...span, limit: "10" }),
        api("/v1/deliveries", { status: "failed", limit: "10" }),
      ]);
      $("window-label").textContent =
        `${timeline.since.slice(0, 16).replace("T", " ")} → ` +
        `${timeline.until.slice(0, 16).replace("T", " ")} UTC · by ${timeline.group_by}`;
      showTotals(timeline);
      drawTimeline(timeline);
      drawFunnel(flows);
      drawChannels(channels, providers);
      showReasons(reasons);
      showFailed(failed);
      setState("ready");
    } catch (err) {
      if (err instanceof Unauthorized) {
        signOut("That API key was refused. Sign in again.");
        return;
      }
      $("load-error").textContent = `Could not load analytics: ${err.message}`;
      $("load-error").hidden = false;
      setState("error");
    }
  }

  function showSignedIn(signedIn) {
    $("signin").hidden = signedIn;
    $("dashboard").hidden = !signedIn;
    $("controls").hidden = !signedIn;
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    for (const id of Object.keys(charts)) {
      charts[id].destroy();
      delete charts[id];
    }
    showSignedIn(false);
    $("signin-error").textContent = message || "";
    $("signin-error").hidden = !message;
    $("api-key").value = "";
    $("api-key").focus();
    setState("signed-out");
  }

  function start() {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY, key);
      $("api-key").value = "";
      $("signin-error").hidden = true;
      showSignedIn(true);
      load();
    });
    $("sign-out").addEventListener("click", () => signOut());
    $("refresh").addEventListener("click", () => load());
    $("range").addEventListener("change", () => load());
    if (apiKey()) {
      showSignedIn(true);
      load();
    } else {
      signOut();
    }
  }

  if (!window.Chart) {
    document.body.dataset.state = "error";
    document.body.textContent = "The charting library did not load.";
    return;
  }
  start();
})();
