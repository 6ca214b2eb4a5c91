// The buyer's sale page, /s/{sale_id} (docs/PAGES.md).
//
// The shell is the same for every sale and every buyer (a CDN may keep it);
// everything dynamic comes from the API: the sale and its live stock
// (GET /api/v1/sales/{id} and its event stream), the sale clock
// (GET /api/v1/time), the buy decision (POST …/purchase), the buyer's orders
// (GET /api/v1/orders/events) and, when the sale has one, the waiting room
// (…/queue/events).
"use strict";

(() => {
  const { api, errorCode, errorText, retryAfter, Clock, span, spanWords, time, dateTime, randomKey, say, $ } =
    window.FS;
  const TOKEN_KEY = "flashsale.buyer-token";
  const saleId = (location.pathname.match(/^\/s\/(\d+)\/?$/) || [])[1];
  const clock = new Clock();
  const outcome = $("outcome");
  const state = {
    sale: null,
    token: null,
    user: null,
    busy: false,
    waitUntil: 0, // device ms: a 429/503 asked to wait until then
    waitWhy: "",
    limitReached: false,
    pass: null, // the waiting room's admission pass
    passExpires: 0,
    roomText: "",
    pendingKey: null, // the key of a purchase whose answer was lost: a retry reuses it
    orders: new Map(),
    lastSpoken: null,
  };
  let saleStream = null;
  let orderStream = null;
  let roomStream = null;
  let tickTimer = null;
  let pollTimer = null;

  // ---- The buyer token: the shop's hook -------------------------------------
  // The shop's page (or its login redirect) opens /s/{id}#token=<JWT>. The
  // fragment never reaches a server, a CDN or a log; the page moves the token
  // to sessionStorage and takes it out of the address bar. A script of the
  // shop's on this page may also call Flashsale.setToken(jwt).

  function tokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const token = params.get("token");
    if (!token) return null;
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    return token;
  }

  function subjectOf(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part)).sub || null;
    } catch {
      return null;
    }
  }

  function setToken(token) {
    state.token = token || null;
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    else sessionStorage.removeItem(TOKEN_KEY);
    state.user = state.token ? subjectOf(state.token) : null;
    state.limitReached = false;
    $("who").textContent = state.user ? "Signed in as " + state.user : "";
    $("signin").hidden = !!state.token;
    openOrderStream();
    openRoom();
    render();
  }

  async function demoBuyer() {
    const r = await api("POST", "/api/v1/demo/token").catch(() => null);
    if (!r || !r.ok) {
      say(outcome, r ? "Demo mode is off on this server: the shop's page passes your token." : "The network failed.", "warn");
      return;
    }
    setToken(r.body.token);
    say(outcome, `You are demo buyer ${r.body.user_id}.`, "info");
    $("buy").focus();
  }

  // ---- The sale and its clock -------------------------------------------------

  /** The phase by the sale clock, corrected by what the server last said. */
  function phase() {
    const s = state.sale;
    if (!s) return "loading";
    const now = clock.now();
    const starts = Date.parse(s.starts_at);
    const ends = s.ends_at ? Date.parse(s.ends_at) : Infinity;
    if (s.status === "ended" || now >= ends) return "ended";
    if (s.remaining === 0 || s.status === "sold_out") return now < starts ? "upcoming" : "sold_out";
    if (s.status === "open") return "open";
    return now < starts ? "upcoming" : "open";
  }

  function applySale(s) {
    const first = !state.sale;
    state.sale = s;
    $("item").textContent = s.item;
    document.title = `${s.item} — flash sale`;
    $("remaining").textContent = String(s.remaining);
    $("stock").textContent = String(s.stock);
    $("limit").textContent = `· at most ${s.per_user_limit} per buyer`;
    const bar = $("stock-bar");
    bar.max = s.stock;
    bar.value = s.remaining;
    bar.setAttribute("aria-valuetext", `${s.remaining} of ${s.stock} left`);
    const q = $("quantity");
    const most = Math.max(1, Math.min(s.per_user_limit, 10));
    if (q.options.length !== most) {
      const was = Number(q.value) || 1;
      q.replaceChildren(
        ...Array.from({ length: most }, (_, i) => new Option(String(i + 1), String(i + 1), i === 0, i + 1 === was)),
      );
    }
    $("main").setAttribute("aria-busy", "false");
    if (first) openRoom();
    render();
  }

  async function loadSale() {
    let r;
    try {
      r = await api("GET", `/api/v1/sales/${saleId}`);
    } catch {
      say(outcome, "The shop cannot be reached. Retrying…", "warn");
      setTimeout(loadSale, 2000);
      return;
    }
    if (r.status === 404) {
      $("item").textContent = "No such sale";
      $("status").textContent = "not found";
      $("main").setAttribute("aria-busy", "false");
      return;
    }
    if (!r.ok) {
      say(outcome, `The sale could not be loaded (${errorText(r)}). Retrying…`, "warn");
      setTimeout(loadSale, 2000);
      return;
    }
    applySale(r.body);
    openSaleStream();
  }

  /** Live stock and status; polling takes over while the stream is down. */
  function openSaleStream() {
    if (saleStream) saleStream.close();
    saleStream = new EventSource(`/api/v1/sales/${saleId}/events`);
    saleStream.addEventListener("sale", (e) => {
      clearInterval(pollTimer);
      pollTimer = null;
      applySale(JSON.parse(e.data));
    });
    saleStream.onerror = () => {
      if (pollTimer) return;
      pollTimer = setInterval(async () => {
        const r = await api("GET", `/api/v1/sales/${saleId}`).catch(() => null);
        if (r && r.ok) applySale(r.body);
      }, 2000);
    };
  }

  // ---- What the page shows ------------------------------------------------------

  const LABELS = { loading: "Loading…", upcoming: "Starts soon", open: "On sale now", sold_out: "Sold out", ended: "Ended" };

  /** Whether the button is on, in phase `p` (one reading of the clock per render). */
  function canBuy(p = phase()) {
    const fd = (state.sale && state.sale.front_door) || {};
    const roomReady = !fd.waiting_room || (state.pass && Date.now() < state.passExpires);
    return (
      p === "open" && !!state.token && !state.busy && Date.now() >= state.waitUntil && !state.limitReached && roomReady
    );
  }

  function whyNot(p) {
    const fd = (state.sale && state.sale.front_door) || {};
    if (p === "upcoming") return "The button turns on when the sale starts.";
    if (p === "sold_out") return "Every unit has been sold.";
    if (p === "ended") return "The sale is over.";
    if (p !== "open") return "";
    if (!state.token) return "Sign in to buy.";
    if (state.busy) return "Placing your order…";
    if (Date.now() < state.waitUntil) return `${state.waitWhy} Try again in ${span(state.waitUntil - Date.now())}.`;
    if (state.limitReached) return "You hold as many as one buyer may.";
    if (fd.waiting_room && !(state.pass && Date.now() < state.passExpires)) return "Wait for your turn in the queue.";
    return "";
  }

  function render() {
    const s = state.sale;
    const p = phase();
    const pill = $("status");
    pill.className = "pill " + p;
    pill.textContent = LABELS[p] || p;
    if (s) {
      const now = clock.now();
      const starts = Date.parse(s.starts_at);
      const ends = s.ends_at ? Date.parse(s.ends_at) : null;
      let label = "";
      let left = null;
      if (p === "upcoming") {
        label = `Starts at ${dateTime(s.starts_at)}`;
        left = starts - now;
      } else if (p === "open" && ends) {
        label = `Ends at ${dateTime(s.ends_at)}`;
        left = ends - now;
      } else if (p === "open") {
        label = "On sale now";
      } else if (p === "ended") {
        label = "This sale has ended";
      } else if (p === "sold_out") {
        label = "Sold out";
      }
      $("when-label").textContent = label;
      $("countdown").textContent = left === null ? "" : span(left);
      speak(p, left);
    }
    const buy = $("buy");
    buy.disabled = !canBuy(p);
    buy.textContent = state.busy ? "Placing order…" : p === "sold_out" ? "Sold out" : "Buy now";
    $("buy-why").textContent = whyNot(p);
    const queue = $("queue");
    queue.hidden = !state.roomText;
    queue.textContent = state.roomText;
  }

  /** What a screen reader hears of the countdown: not every second. */
  function speak(p, left) {
    let words = null;
    if (p === "upcoming" && left !== null) {
      const s = Math.ceil(left / 1000);
      if (state.lastSpoken === null || s % 60 === 0 || s === 30 || s === 10) words = `Starts in ${spanWords(left)}`;
    } else if (p !== state.lastPhase) {
      words = p === "open" ? "The sale is open: you can buy now." : LABELS[p];
    }
    state.lastPhase = p;
    if (words && words !== state.lastSpoken) {
      state.lastSpoken = words;
      $("countdown-words").textContent = words;
    }
  }

  /** Renders on every second of the countdown and exactly at the start. */
  function tick() {
    clearTimeout(tickTimer);
    render();
    let delay = 1000;
    const s = state.sale;
    if (s) {
      const left = Date.parse(s.starts_at) - clock.now();
      if (left > 0) delay = left % 1000 || 1000;
    }
    tickTimer = setTimeout(tick, Math.max(4, delay));
  }

  async function syncClock() {
    await clock.sync();
    if (clock.synced) {
      const skew = Math.round(clock.offset);
      $("clock-note").textContent =
        Math.abs(skew) >= 1000
          ? `Your device's clock is ${span(Math.abs(skew))} ${skew > 0 ? "behind" : "ahead of"} the shop's: the countdown follows the shop's.`
          : "The countdown follows the shop's clock.";
    }
    tick();
  }

  // ---- Buying ----------------------------------------------------------------------

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** An error whose message is for the buyer. */
  class Told extends Error {}

  /** The front door's proofs for one purchase, as headers. */
  async function proofs(headers) {
    const fd = state.sale.front_door || {};
    if (fd.waiting_room) headers["X-Flashsale-Pass"] = state.pass;
    if (fd.ticket) {
      const r = await api("GET", `/api/v1/sales/${saleId}/ticket`, { token: state.token });
      if (!r.ok) throw new Told(errorText(r));
      headers["X-Flashsale-Ticket"] = r.body.ticket;
    }
    if (fd.pow_bits) {
      const r = await api("GET", `/api/v1/sales/${saleId}/challenge`, { token: state.token });
      if (!r.ok) throw new Told(errorText(r));
      say(outcome, "Checking you are not a bot…", "info");
      headers["X-Flashsale-Pow"] = `${r.body.challenge}:${await solve(r.body.challenge, r.body.bits)}`;
    }
    if (fd.captcha) {
      const hook = window.Flashsale.captcha;
      if (typeof hook !== "function") throw new Told("This sale needs the shop's captcha, which this page was not given.");
      headers["X-Captcha-Token"] = await hook();
    }
  }

  /** A proof-of-work solution: SHA-256(challenge ":" n) with `bits` leading zero bits. */
  async function solve(challenge, bits) {
    if (!window.crypto.subtle) throw new Told("This sale's bot check needs a secure (HTTPS) page.");
    const enc = new TextEncoder();
    const zeroBits = (h) => {
      let n = 0;
      for (const b of h) {
        if (b === 0) {
          n += 8;
          continue;
        }
        return n + Math.clz32(b) - 24;
      }
      return n;
    };
    for (let base = 0; ; base += 256) {
      const batch = Array.from({ length: 256 }, (_, i) => String(base + i));
      const hashes = await Promise.all(
        batch.map((n) => window.crypto.subtle.digest("SHA-256", enc.encode(`${challenge}:${n}`))),
      );
      const hit = hashes.findIndex((h) => zeroBits(new Uint8Array(h)) >= bits);
      if (hit >= 0) return batch[hit];
    }
  }

  async function buy(event) {
    event.preventDefault();
    if (!state.token) {
      say(outcome, "Sign in to buy.", "warn");
      $("demo").focus();
      return;
    }
    if (!canBuy()) return;
    state.busy = true;
    render();
    say(outcome, "Placing your order…", "info");
    const quantity = Number($("quantity").value) || 1;
    // One key per intent to buy: a retry after a lost answer is the same
    // purchase, never a second one.
    const key = state.pendingKey || randomKey();
    state.pendingKey = key;
    try {
      const headers = { "Idempotency-Key": key };
      await proofs(headers);
      let r = null;
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          r = await api("POST", `/api/v1/sales/${saleId}/purchase`, {
            token: state.token,
            body: { quantity },
            headers,
          });
        } catch {
          r = null;
          await sleep(250 * (attempt + 1));
          continue;
        }
        const code = errorCode(r);
        if ((code === "overloaded" || code === "unavailable") && attempt < 2) {
          await sleep(Math.min(retryAfter(r), 2) * 1000);
          continue;
        }
        break;
      }
      if (!r) {
        say(outcome, "The shop could not be reached. Try again: a retry cannot buy twice.", "bad");
        return;
      }
      state.pendingKey = null;
      answered(r);
    } catch (e) {
      say(outcome, e instanceof Told ? e.message : "Something went wrong. Try again.", "bad");
    } finally {
      state.busy = false;
      render();
      // Disabled while the order was placed, the button lost the focus:
      // give it back, or to the outcome when buying is over.
      ($("buy").disabled ? outcome : $("buy")).focus();
    }
  }

  /** Shows a purchase's answer. */
  function answered(r) {
    if (r.status === 201) {
      const o = r.body;
      upsertOrder(o);
      const due = o.expires_at ? ` Pay by ${time(o.expires_at)}.` : "";
      say(outcome, `You got it! Order ${o.order_id}: ${o.quantity} × ${state.sale.item}.${due}`, "ok");
      return;
    }
    const code = errorCode(r);
    const wait = () => {
      const secs = retryAfter(r);
      state.waitUntil = Date.now() + secs * 1000;
      return secs;
    };
    switch (code) {
      case "sold_out":
        state.sale = { ...state.sale, remaining: 0, status: "sold_out" };
        applySale(state.sale);
        say(outcome, "Sold out: every unit has been taken. The shop has noted that you wanted one.", "bad");
        break;
      case "limit_reached":
        state.limitReached = true;
        say(outcome, `You already hold the most one buyer may buy (${state.sale.per_user_limit}).`, "warn");
        break;
      case "rate_limited": {
        state.waitWhy = "Too many tries.";
        const secs = wait();
        say(outcome, `Too many tries. Try again in ${secs} s.`, "warn");
        break;
      }
      case "overloaded":
      case "unavailable": {
        state.waitWhy = "The shop is very busy.";
        const secs = wait();
        say(outcome, `The shop is very busy. Try again in ${secs} s.`, "warn");
        break;
      }
      case "not_started":
        say(outcome, "Not started yet: the countdown follows the shop's clock.", "warn");
        syncClock();
        break;
      case "ended":
        state.sale = { ...state.sale, status: "ended" };
        applySale(state.sale);
        say(outcome, "The sale has ended.", "bad");
        break;
      case "unauthorized":
        setToken(null);
        say(outcome, "Your sign-in has expired: sign in again through the shop.", "bad");
        break;
      case "pass_required":
        state.pass = null;
        say(outcome, "Your turn in the queue has passed or is not here yet.", "warn");
        openRoom();
        break;
      case "in_flight":
        say(outcome, "Your other purchase is still being placed.", "info");
        break;
      default:
        say(outcome, errorText(r), "bad");
    }
  }

  // ---- The buyer's orders -----------------------------------------------------------

  function upsertOrder(o) {
    if (o.sale_id !== saleId) return;
    const was = state.orders.get(o.order_id) || {};
    state.orders.set(o.order_id, { ...was, ...o });
    renderOrders();
  }

  const STATUS = { pending_payment: "awaiting payment", paid: "paid", expired: "expired", cancelled: "cancelled" };

  function renderOrders() {
    const list = $("order-list");
    const items = [...state.orders.values()].sort((a, b) => (a.order_id < b.order_id ? -1 : 1));
    $("orders").hidden = items.length === 0;
    list.replaceChildren(
      ...items.map((o) => {
        const li = document.createElement("li");
        li.dataset.orderId = o.order_id;
        const text = document.createElement("span");
        const due = o.status === "pending_payment" && o.expires_at ? ` · pay by ${time(o.expires_at)}` : "";
        text.textContent = `Order ${o.order_id} · ${o.quantity} unit${o.quantity === 1 ? "" : "s"} · `;
        const st = document.createElement("strong");
        st.className = "order-status";
        st.textContent = STATUS[o.status] || o.status;
        li.append(text, st, document.createTextNode(due));
        if (o.status === "pending_payment") {
          for (const [action, label] of [["pay", "Pay"], ["cancel", "Cancel"]]) {
            const b = document.createElement("button");
            b.type = "button";
            b.textContent = label;
            b.setAttribute("aria-label", `${label} order ${o.order_id}`);
            b.addEventListener("click", () => orderAction(o.order_id, action));
            li.append(b);
          }
        }
        return li;
      }),
    );
  }

  async function orderAction(id, action) {
    const r = await api("POST", `/api/v1/orders/${id}/${action}`, { token: state.token }).catch(() => null);
    if (r && r.ok) {
      upsertOrder(r.body);
      say(outcome, action === "pay" ? `Order ${id} is paid. Thank you!` : `Order ${id} is cancelled.`, "ok");
    } else {
      say(outcome, r ? errorText(r) : "The network failed.", "bad");
    }
  }

  /** The buyer's order events (accepted, paid, expired, cancelled), from any node. */
  function openOrderStream() {
    if (orderStream) orderStream.close();
    orderStream = null;
    if (!state.token) return;
    orderStream = new EventSource(`/api/v1/orders/events?access_token=${encodeURIComponent(state.token)}`);
    for (const name of ["accepted", "paid", "expired", "cancelled", "changed"]) {
      orderStream.addEventListener(name, (e) => {
        const ev = JSON.parse(e.data);
        upsertOrder({ order_id: ev.order_id, sale_id: ev.sale_id, quantity: ev.quantity, status: ev.status });
      });
    }
  }

  // ---- The waiting room ---------------------------------------------------------------

  function openRoom() {
    if (roomStream) roomStream.close();
    roomStream = null;
    const fd = state.sale && state.sale.front_door;
    if (!fd || !fd.waiting_room || !state.token) {
      state.roomText = "";
      render();
      return;
    }
    state.roomText = "Joining the queue…";
    roomStream = new EventSource(
      `/api/v1/sales/${saleId}/queue/events?access_token=${encodeURIComponent(state.token)}`,
    );
    const on = (name, f) => roomStream.addEventListener(name, (e) => {
      f(JSON.parse(e.data));
      render();
    });
    on("drawing", (b) => {
      state.roomText = `You are in the queue with ${b.waiting} others. Places are drawn at random when the sale opens: arriving early gives no edge.`;
    });
    on("waiting", (b) => {
      const eta = b.estimated_wait_ms ? ` About ${span(b.estimated_wait_ms)} to go.` : "";
      state.roomText = `Your place in the queue: ${b.position} of ${b.waiting}.${eta}`;
    });
    on("admitted", (b) => {
      state.pass = b.pass;
      state.passExpires = Date.parse(b.expires_at) - clock.offset;
      state.roomText = `It's your turn! Buy before ${time(b.expires_at)}.`;
      say(outcome, "It's your turn: you can buy now.", "ok");
    });
    on("sold_out", () => {
      state.roomText = "Sold out while you waited.";
      roomStream.close();
    });
    on("ended", () => {
      state.roomText = "The sale has ended.";
      roomStream.close();
    });
    on("absent", () => {
      state.roomText = "You are not in the queue.";
    });
  }

  // ---- Start ------------------------------------------------------------------------

  window.Flashsale = { setToken, captcha: null };
  if (!saleId) {
    $("item").textContent = "No such sale";
    return;
  }
  $("buy-form").addEventListener("submit", buy);
  $("demo").addEventListener("click", demoBuyer);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") syncClock();
  });
  setInterval(() => {
    if (phase() === "upcoming") syncClock();
  }, 30_000);
  setToken(tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY));
  syncClock();
  loadSale();
  window.dispatchEvent(new Event("flashsale:ready"));
})();
