// The admin dashboard, /admin (docs/PAGES.md): list, create, open and close
// sales, and watch one live. The charts are uPlot's; their numbers are the
// sale's counters (GET /api/v1/sales/{id}/stats) and this node's metrics
// (GET /metrics: the purchase latency histogram and the waiting room's
// length), read once a second. Rates and percentiles are computed here
// from the difference between two readings, as Prometheus's rate() and
// histogram_quantile() would.
"use strict";

(() => {
  const { api, errorText, dateTime, say, $ } = window.FS;
  const TOKEN_KEY = "flashsale.admin-token";
  const POINTS = 180; // three minutes at one reading a second
  let token = sessionStorage.getItem(TOKEN_KEY);
  let watched = null; // the sale id on the charts
  let charts = null;
  let previous = null; // the last reading
  let series = null; // the charts' data
  let pollTimer = null;
  let listTimer = null;

  // ---- Signing in -------------------------------------------------------------------

  async function signIn(candidate) {
    const r = await api("GET", "/api/v1/sales", { token: candidate }).catch(() => null);
    if (!r) return "The server cannot be reached.";
    if (r.status === 401 || r.status === 403) return "That is not the admin token.";
    if (!r.ok) return errorText(r);
    token = candidate;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    showSales(r.body.items);
    clearInterval(listTimer);
    listTimer = setInterval(refreshSales, 2000);
    return null;
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    clearInterval(listTimer);
    clearInterval(pollTimer);
    $("app").hidden = true;
    $("signout").hidden = true;
    $("login").hidden = false;
    $("admin-token").value = "";
    $("admin-token").focus();
  }

  // ---- The sales ---------------------------------------------------------------------

  async function refreshSales() {
    const r = await api("GET", "/api/v1/sales", { token }).catch(() => null);
    if (r && (r.status === 401 || r.status === 403)) return signOut();
    if (r && r.ok) showSales(r.body.items);
  }

  function button(label, title, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.setAttribute("aria-label", title);
    b.addEventListener("click", onClick);
    return b;
  }

  function showSales(items) {
    const body = $("sales");
    $("no-sales").hidden = items.length > 0;
    const sorted = [...items].sort((a, b) => (BigInt(b.id) > BigInt(a.id) ? 1 : -1));
    body.replaceChildren(
      ...sorted.map((s) => {
        const tr = document.createElement("tr");
        tr.dataset.saleId = s.id;
        const cell = (content) => {
          const td = document.createElement("td");
          td.append(content);
          tr.append(td);
          return td;
        };
        const name = document.createElement("span");
        name.append(document.createTextNode(s.item), document.createElement("br"));
        const id = document.createElement("small");
        id.className = "muted";
        id.textContent = s.id;
        name.append(id);
        cell(name);
        const pill = document.createElement("span");
        pill.className = "pill " + s.status;
        pill.textContent = s.status.replace("_", " ");
        cell(pill);
        cell(`${s.remaining} / ${s.stock}`);
        cell(dateTime(s.starts_at));
        cell(s.ends_at ? dateTime(s.ends_at) : "—");
        const actions = document.createElement("div");
        actions.className = "actions";
        const page = document.createElement("a");
        page.className = "button";
        page.href = `/s/${s.id}`;
        page.target = "_blank";
        page.rel = "noopener";
        page.textContent = "Page";
        page.setAttribute("aria-label", `Sale page of ${s.item}`);
        actions.append(
          button(watched === s.id ? "Watching" : "Watch", `Watch ${s.item} live`, () => watch(s.id, s.item)),
          page,
        );
        if (s.status === "upcoming") actions.append(button("Open now", `Open ${s.item} now`, () => act(s, "open")));
        if (s.status !== "ended") actions.append(button("Close now", `Close ${s.item} now`, () => act(s, "close")));
        cell(actions);
        return tr;
      }),
    );
  }

  async function act(sale, action) {
    const verb = action === "open" ? "Open" : "Close";
    if (!window.confirm(`${verb} “${sale.item}” now?`)) return;
    const r = await api("POST", `/api/v1/sales/${sale.id}/${action}`, { token }).catch(() => null);
    if (r && r.ok) say($("notice"), `${sale.item}: ${action === "open" ? "open now" : "closed"}.`, "ok");
    else say($("notice"), r ? `${verb}: ${errorText(r)}` : "The server cannot be reached.", "bad");
    refreshSales();
  }

  async function create(event) {
    event.preventDefault();
    // By id: a form's `elements.item` is the collection's item() method.
    const num = (id) => ($(id).value === "" ? null : Number($(id).value));
    const startsAt = Date.now() + (num("c-starts") || 0) * 1000;
    const body = {
      item: $("c-item").value,
      stock: num("c-stock"),
      per_user_limit: num("c-limit"),
      starts_at: new Date(startsAt).toISOString(),
    };
    if (num("c-minutes")) body.ends_at = new Date(startsAt + num("c-minutes") * 60_000).toISOString();
    if (num("c-pay")) body.payment_window_secs = num("c-pay");
    if (num("c-room")) body.front_door = { waiting_room: { admit_per_sec: num("c-room") } };
    const r = await api("POST", "/api/v1/sales", { token, body }).catch(() => null);
    if (!r || !r.ok) {
      say($("notice"), r ? `Not created: ${errorText(r)}` : "The server cannot be reached.", "bad");
      return;
    }
    say($("notice"), `Created “${r.body.item}” (sale ${r.body.id}). Its page: /s/${r.body.id}`, "ok");
    await refreshSales();
    watch(r.body.id, r.body.item);
  }

  // ---- Live charts ---------------------------------------------------------------------

  /** Prometheus text → [{name, labels, value}]. */
  function parseMetrics(text) {
    const out = [];
    for (const line of text.split("\n")) {
      if (!line || line[0] === "#") continue;
      const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
      if (!m) continue;
      const labels = {};
      if (m[2]) for (const l of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
      out.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return out;
  }

  /** The cumulative buckets of a histogram: [[le, count]] by le. */
  function buckets(metrics, name) {
    return metrics
      .filter((m) => m.name === name + "_bucket")
      .map((m) => [m.labels.le === "+Inf" ? Infinity : Number(m.labels.le), m.value])
      .sort((a, b) => a[0] - b[0]);
  }

  /** The q-quantile of the observations between two readings of a histogram, as histogram_quantile(). */
  function quantile(q, before, after) {
    const d = after.map(([le, n], i) => [le, n - ((before[i] && before[i][1]) || 0)]);
    const total = d.length ? d[d.length - 1][1] : 0;
    if (total <= 0) return null;
    const rank = q * total;
    let [lowLe, lowN] = [0, 0];
    for (const [le, n] of d) {
      if (n >= rank) {
        if (le === Infinity) return lowLe;
        return lowLe + (le - lowLe) * ((rank - lowN) / (n - lowN || 1));
      }
      [lowLe, lowN] = [le, n];
    }
    return lowLe;
  }

  const OUTCOMES = [
    ["accepted", "#16a34a"],
    ["sold_out", "#dc2626"],
    ["limit_reached", "#d97706"],
    ["rate_limited", "#7c3aed"],
    ["other", "#64748b"],
  ];

  function chart(id, lines) {
    const el = $(id);
    el.querySelectorAll(".uplot").forEach((n) => n.remove());
    const u = new window.uPlot(
      {
        width: Math.max(260, el.clientWidth - 16),
        height: 200,
        scales: { x: { time: true } },
        series: [{}, ...lines.map(([label, stroke]) => ({ label, stroke, width: 2, points: { show: false } }))],
        axes: [{ stroke: "#57534e" }, { stroke: "#57534e", size: 56 }],
        legend: { live: false },
      },
      [[], ...lines.map(() => [])],
      el,
    );
    return { u, el, data: [[], ...lines.map(() => [])] };
  }

  function watch(id, item) {
    watched = id;
    previous = null;
    $("live").hidden = false;
    $("live-sub").textContent = `${item} (sale ${id}) · latency is every purchase on this node`;
    charts = {
      attempts: chart("chart-attempts", OUTCOMES),
      stock: chart("chart-stock", [["units left", "#c2410c"]]),
      writer: chart("chart-writer", [["accepted", "#16a34a"], ["persisted", "#2563eb"]]),
      latency: chart("chart-latency", [["p50", "#2563eb"], ["p99", "#dc2626"]]),
      room: chart("chart-room", [["waiting", "#7c3aed"]]),
    };
    clearInterval(pollTimer);
    poll();
    pollTimer = setInterval(poll, 1000);
    refreshSales();
  }

  function push(c, t, values) {
    c.data[0].push(t);
    values.forEach((v, i) => c.data[i + 1].push(v));
    if (c.data[0].length > POINTS) c.data.forEach((s) => s.shift());
    c.u.setData(c.data);
    // For people and tests alike: the largest value on the chart.
    const max = Math.max(0, ...c.data.slice(1).flat().filter((v) => v !== null));
    c.el.dataset.max = String(max);
    c.el.dataset.points = String(c.data[0].length);
  }

  function tile(label, value) {
    const d = document.createElement("div");
    d.className = "tile";
    const v = document.createElement("div");
    v.className = "v";
    v.textContent = value;
    const k = document.createElement("div");
    k.className = "k";
    k.textContent = label;
    d.append(v, k);
    return d;
  }

  async function poll() {
    const id = watched;
    const [stats, metrics] = await Promise.all([
      api("GET", `/api/v1/sales/${id}/stats`, { token }).catch(() => null),
      fetch("/metrics", { cache: "no-store" })
        .then((r) => (r.ok ? r.text() : ""))
        .catch(() => ""),
    ]);
    if (id !== watched || !stats || !stats.ok) return;
    const s = stats.body;
    const m = parseMetrics(metrics);
    const now = performance.now();
    const rejected = s.rejected || {};
    const reading = {
      at: now,
      accepted: s.accepted,
      byCode: rejected,
      latency: buckets(m, "flashsale_purchase_duration_seconds"),
    };
    const waiting = m.find((x) => x.name === "flashsale_room_waiting" && x.labels.sale === id);
    const t = Date.now() / 1000;
    if (previous) {
      const dt = (now - previous.at) / 1000 || 1;
      const rate = (a, b) => Math.max(0, (a - b) / dt);
      const known = ["sold_out", "limit_reached", "rate_limited"];
      const otherNow = Object.entries(rejected).filter(([k]) => !known.includes(k)).reduce((a, [, v]) => a + v, 0);
      const otherThen = Object.entries(previous.byCode)
        .filter(([k]) => !known.includes(k))
        .reduce((a, [, v]) => a + v, 0);
      const perSec = [
        rate(s.accepted, previous.accepted),
        ...known.map((k) => rate(rejected[k] || 0, previous.byCode[k] || 0)),
        rate(otherNow, otherThen),
      ];
      push(charts.attempts, t, perSec);
      const p50 = quantile(0.5, previous.latency, reading.latency);
      const p99 = quantile(0.99, previous.latency, reading.latency);
      push(charts.latency, t, [p50 === null ? null : p50 * 1000, p99 === null ? null : p99 * 1000]);
      const total = perSec.reduce((a, b) => a + b, 0);
      $("tiles").replaceChildren(
        tile("units left", `${s.remaining} / ${s.stock}`),
        tile("attempts / s", total.toFixed(0)),
        tile("accepted / s", perSec[0].toFixed(0)),
        tile("writer lag (accepted − persisted)", String(Math.max(0, s.accepted - s.orders_persisted))),
        tile("p99 latency", p99 === null ? "—" : `${(p99 * 1000).toFixed(1)} ms`),
        tile("waiting room", waiting ? String(waiting.value) : "—"),
      );
    }
    push(charts.stock, t, [s.remaining]);
    push(charts.writer, t, [s.accepted, s.orders_persisted]);
    push(charts.room, t, [waiting ? waiting.value : 0]);
    previous = reading;
  }

  window.addEventListener("resize", () => {
    if (!charts) return;
    for (const c of Object.values(charts)) c.u.setSize({ width: Math.max(260, c.el.clientWidth - 16), height: 200 });
  });

  // ---- Start ---------------------------------------------------------------------------

  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const problem = await signIn($("admin-token").value.trim());
    if (problem) say($("login-message"), problem, "bad");
  });
  $("signout").addEventListener("click", signOut);
  $("create").addEventListener("submit", create);
  (async () => {
    const problem = token ? await signIn(token) : "no token";
    if (problem) {
      $("login").hidden = false;
      $("admin-token").focus();
    }
  })();
})();
