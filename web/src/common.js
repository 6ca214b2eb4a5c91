// Flashsale pages: what the sale page and the dashboard share. Plain
// browser JavaScript, no build step: the binary serves these files as they
// are (src/http/pages.rs).
"use strict";

window.FS = (() => {
  /**
   * One API call. Resolves to {status, ok, body, headers} for every HTTP
   * answer (an error answer's body is the contract's {"error": {code,
   * message}}); rejects only when the network fails.
   */
  async function api(method, path, { token, body, headers = {}, signal } = {}) {
    const h = { Accept: "application/json", ...headers };
    if (token) h.Authorization = "Bearer " + token;
    let payload;
    if (body !== undefined) {
      h["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const res = await fetch(path, { method, headers: h, body: payload, signal, cache: "no-store" });
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = { raw: text };
      }
    }
    return { status: res.status, ok: res.ok, body: data, headers: res.headers };
  }

  /** The machine-readable code of an error answer, or null. */
  const errorCode = (r) => (r && r.body && r.body.error ? r.body.error.code : null);
  /** The human text of an error answer. */
  const errorText = (r) =>
    r && r.body && r.body.error ? r.body.error.message : `HTTP ${r ? r.status : "?"}`;

  /** Seconds of a `Retry-After` header (1 when absent or unreadable). */
  function retryAfter(r) {
    const v = Number(r.headers.get("retry-after"));
    return Number.isFinite(v) && v > 0 ? v : 1;
  }

  /**
   * The sale clock: the server's clock (the one that opens sales), not the
   * device's. Each sync takes several round trips to `GET /api/v1/time`
   * and keeps the offset of the fastest, read at its midpoint (as NTP does):
   * the error is at most half that round trip.
   */
  class Clock {
    constructor() {
      this.offset = 0;
      this.rtt = null;
      this.synced = false;
    }
    now() {
      return Date.now() + this.offset;
    }
    async sync(samples = 5) {
      let best = null;
      for (let i = 0; i < samples; i++) {
        const t0 = performance.now();
        let r;
        try {
          r = await api("GET", "/api/v1/time");
        } catch {
          continue;
        }
        const t1 = performance.now();
        if (!r.ok || typeof r.body.now_ms !== "number") continue;
        const rtt = t1 - t0;
        if (best === null || rtt < best.rtt) {
          const midpoint = Date.now() - (performance.now() - (t0 + t1) / 2);
          best = { rtt, offset: r.body.now_ms - midpoint };
        }
      }
      if (best) {
        this.offset = best.offset;
        this.rtt = best.rtt;
        this.synced = true;
      }
      return this.synced;
    }
  }

  /** "1d 02:03:04", "02:03:04" or "03:04" for a span in ms. */
  function span(ms) {
    let s = Math.max(0, Math.ceil(ms / 1000));
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    const two = (n) => String(n).padStart(2, "0");
    const clock = h || d ? `${two(h)}:${two(m)}:${two(s)}` : `${two(m)}:${two(s)}`;
    return d ? `${d}d ${clock}` : clock;
  }

  /** A span in words, for screen readers: "1 hour 2 minutes 3 seconds". */
  function spanWords(ms) {
    let s = Math.max(0, Math.ceil(ms / 1000));
    const parts = [];
    for (const [unit, size] of [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]]) {
      const n = Math.floor(s / size);
      s -= n * size;
      if (n) parts.push(`${n} ${unit}${n === 1 ? "" : "s"}`);
    }
    return parts.length ? parts.join(" ") : "0 seconds";
  }

  /** A local time of day for an RFC 3339 time. */
  const time = (iso) =>
    new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  /** A local date and time for an RFC 3339 time. */
  const dateTime = (iso) =>
    new Date(iso).toLocaleString([], {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    });

  /** A random key (an `Idempotency-Key`); works outside secure contexts too. */
  function randomKey() {
    if (window.crypto.randomUUID && window.isSecureContext) return window.crypto.randomUUID();
    const b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  /** Sets the text and tone of a message element (tone: ok, warn, bad, info). */
  function say(el, text, tone = "info") {
    el.className = "message " + tone;
    el.textContent = text;
  }

  /** `document.getElementById`. */
  const $ = (id) => document.getElementById(id);

  return { api, errorCode, errorText, retryAfter, Clock, span, spanWords, time, dateTime, randomKey, say, $ };
})();
