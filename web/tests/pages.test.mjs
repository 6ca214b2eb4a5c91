// Browser tests of the sale page and the admin dashboard: the real binary,
// Debian's Chromium, playwright-core (scripts/browser-tests.sh runs them).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, createSale, call, token, tokens, screenshot, ADMIN } from "./harness.mjs";

let server;
let browser;
before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const iso = (ms) => new Date(ms).toISOString();

/** A page for `buyer` (a token passed the shop's way: the URL fragment). */
async function buyerPage(saleId, buyer, viewport = { width: 1100, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  page.on("console", (m) => m.type() === "error" && errors.push(new Error(m.text())));
  const fragment = buyer ? `#token=${token(buyer)}` : "";
  await page.goto(`${server.base}/s/${saleId}${fragment}`);
  await page.waitForSelector("#main[aria-busy=false]");
  return { page, context, errors };
}

test("the shell is static and cacheable: ETag, 304, fingerprinted immutable assets", async () => {
  const sale = await createSale(server.base, { item: "Cache check", stock: 1, starts_at: iso(Date.now()) });
  const first = await fetch(`${server.base}/s/${sale.id}`);
  assert.equal(first.status, 200);
  assert.match(first.headers.get("content-type"), /^text\/html/);
  assert.match(first.headers.get("cache-control"), /public, max-age=\d+/);
  const etag = first.headers.get("etag");
  assert.ok(etag);
  const html = await first.text();
  // The same bytes for any sale: nothing of the sale is in the shell.
  const other = await fetch(`${server.base}/s/1`);
  assert.equal(await other.text(), html);
  const again = await fetch(`${server.base}/s/${sale.id}`, { headers: { "If-None-Match": etag } });
  assert.equal(again.status, 304);
  const script = html.match(/src="(\/assets\/sale\.[0-9a-f]{12}\.js)"/);
  assert.ok(script, "the shell links a fingerprinted script");
  const asset = await fetch(server.base + script[1]);
  assert.equal(asset.status, 200);
  assert.match(asset.headers.get("cache-control"), /immutable/);
  const stale = await fetch(`${server.base}/assets/sale.000000000000.js`);
  assert.equal(stale.status, 200);
  assert.equal(stale.headers.get("cache-control"), "no-cache");
  const missing = await fetch(`${server.base}/assets/nope.js`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, "not_found");
});

test("countdown before the start, the button enables at the start, the buyer buys and sees the order", async () => {
  const startsAt = Date.now() + 5_000;
  const sale = await createSale(server.base, {
    item: "Trail runner, limited",
    stock: 1,
    per_user_limit: 1,
    starts_at: iso(startsAt),
    payment_window_secs: 600,
  });
  const { page, context, errors } = await buyerPage(sale.id, "alice");
  // The token left the address bar for the tab's storage.
  assert.ok(!page.url().includes("token="));
  await page.waitForFunction(() => /\d\d:\d\d/.test(document.getElementById("countdown").textContent));
  assert.equal(await page.textContent("#status"), "Starts soon");
  assert.ok(await page.isDisabled("#buy"));
  assert.match(await page.textContent("#who"), /alice/);
  await page.evaluate(() => {
    const b = document.getElementById("buy");
    new MutationObserver(() => {
      if (!b.disabled && !window.enabledAt) window.enabledAt = Date.now();
    }).observe(b, { attributes: true });
  });
  await screenshot(page, "sale-countdown.png");
  await page.waitForFunction(() => window.enabledAt, null, { timeout: 10_000 });
  const enabledAt = await page.evaluate(() => window.enabledAt);
  // At the start by the server's clock (the same machine's here), not before.
  assert.ok(enabledAt >= startsAt - 20, `enabled ${startsAt - enabledAt} ms early`);
  assert.ok(enabledAt <= startsAt + 400, `enabled ${enabledAt - startsAt} ms late`);
  assert.equal(await page.textContent("#status"), "On sale now");
  // By keyboard: from the quantity to the button, then Enter.
  await page.focus("#quantity");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.id), "buy");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => /You got it! Order \d+/.test(document.getElementById("outcome").textContent));
  const text = await page.textContent("#outcome");
  assert.match(text, /Pay by/);
  assert.equal(await page.getAttribute("#outcome", "role"), "status");
  assert.equal(await page.getAttribute("#outcome", "aria-live"), "polite");
  await page.waitForSelector("#order-list li .order-status");
  assert.equal(await page.textContent("#order-list li .order-status"), "awaiting payment");
  // The order is really there.
  const orderId = text.match(/Order (\d+)/)[1];
  const order = await call(server.base, "GET", `/api/v1/orders/${orderId}`, { auth: token("alice") });
  assert.equal(order.status, 200);
  assert.equal(order.body.user_id, "alice");
  await page.waitForFunction(() => document.getElementById("remaining").textContent === "0");
  await screenshot(page, "sale-order.png");
  // Paying from the list: the order stream and the answer both update it.
  await page.click(`#order-list button[aria-label="Pay order ${orderId}"]`);
  await page.waitForFunction(() => document.querySelector("#order-list li .order-status").textContent === "paid");
  assert.deepEqual(errors, []);
  await context.close();
});

test("a second buyer sees sold out, and the remaining stock updates live without a reload", async () => {
  const sale = await createSale(server.base, { item: "Last pair", stock: 2, starts_at: iso(Date.now() - 1000) });
  const { page, context } = await buyerPage(sale.id, "bob");
  assert.equal(await page.textContent("#remaining"), "2");
  // Others buy through the API: this page hears it from the sale's stream.
  for (const user of ["carol", "dave"]) {
    const r = await call(server.base, "POST", `/api/v1/sales/${sale.id}/purchase`, { auth: token(user) });
    assert.equal(r.status, 201);
  }
  await page.waitForFunction(() => document.getElementById("remaining").textContent === "0", null, {
    timeout: 5_000,
  });
  await page.waitForFunction(() => document.getElementById("status").textContent === "Sold out");
  assert.ok(await page.isDisabled("#buy"));
  // A buyer whose page still offers the button hears "sold out" from the purchase.
  const late = await createSale(server.base, { item: "One left", stock: 1, starts_at: iso(Date.now() - 1000) });
  const second = await buyerPage(late.id, "erin");
  await second.page.waitForFunction(() => !document.getElementById("buy").disabled);
  const r = await call(server.base, "POST", `/api/v1/sales/${late.id}/purchase`, { auth: token("frank") });
  assert.equal(r.status, 201);
  // Race the stream: click at once (the button may already be off: then the stream won).
  const clicked = await second.page.evaluate(() => {
    const b = document.getElementById("buy");
    if (b.disabled) return false;
    b.click();
    return true;
  });
  await second.page.waitForFunction(() => /Sold out/.test(document.getElementById("status").textContent));
  if (clicked) {
    await second.page.waitForFunction(() => /Sold out/.test(document.getElementById("outcome").textContent));
  }
  await screenshot(second.page, "sale-sold-out.png");
  await second.context.close();
  await context.close();
});

test("limit reached and rate limited are told with what to do", async () => {
  const sale = await createSale(server.base, {
    item: "One per buyer",
    stock: 10,
    per_user_limit: 1,
    starts_at: iso(Date.now() - 1000),
  });
  const r = await call(server.base, "POST", `/api/v1/sales/${sale.id}/purchase`, { auth: token("gina") });
  assert.equal(r.status, 201);
  const { page, context } = await buyerPage(sale.id, "gina");
  await page.waitForFunction(() => !document.getElementById("buy").disabled);
  await page.click("#buy");
  await page.waitForFunction(() => /most one buyer may buy \(1\)/.test(document.getElementById("outcome").textContent));
  assert.ok(await page.isDisabled("#buy"));
  // Focus went to the outcome, where a keyboard user can read it.
  assert.equal(await page.evaluate(() => document.activeElement.id), "outcome");
  await context.close();
});

test("on a phone-sized screen everything fits and the button is large", async () => {
  const sale = await createSale(server.base, {
    item: "Phone check: wireless earbuds, second generation",
    stock: 50,
    per_user_limit: 2,
    starts_at: iso(Date.now() + 3_600_000),
  });
  const { page, context } = await buyerPage(sale.id, "hana", { width: 375, height: 740 });
  await page.waitForFunction(() => /\d\d:\d\d:\d\d/.test(document.getElementById("countdown").textContent));
  const fits = await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
  assert.ok(fits, "no sideways scrolling");
  const box = await page.locator("#buy").boundingBox();
  assert.ok(box.height >= 44, `a touch target of ${box.height}px`);
  assert.ok(box.x >= 0 && box.x + box.width <= 375);
  // Every control has a label.
  assert.equal(await page.locator("label[for=quantity]").count(), 1);
  await screenshot(page, "sale-phone.png", { fullPage: true });
  await context.close();
});

test("demo mode: a visitor without a token becomes a demo buyer", async () => {
  const sale = await createSale(server.base, { item: "Demo check", stock: 3, starts_at: iso(Date.now() - 1000) });
  const { page, context } = await buyerPage(sale.id, null);
  assert.ok(await page.isVisible("#signin"));
  assert.match(await page.textContent("#buy-why"), /Sign in/);
  await page.click("#demo");
  await page.waitForFunction(() => /demo-/.test(document.getElementById("who").textContent));
  await page.waitForFunction(() => !document.getElementById("buy").disabled);
  await page.click("#buy");
  await page.waitForFunction(() => /You got it!/.test(document.getElementById("outcome").textContent));
  await context.close();
});

test("the waiting room shows the buyer's place, then lets them buy", async () => {
  const sale = await createSale(server.base, {
    item: "Queued drop",
    stock: 5,
    starts_at: iso(Date.now() + 2_000),
    front_door: { waiting_room: { admit_per_sec: 50 } },
  });
  const { page, context } = await buyerPage(sale.id, "ivan");
  await page.waitForFunction(() => /in the queue/.test(document.getElementById("queue").textContent), null, {
    timeout: 5_000,
  });
  await page.waitForFunction(() => /your turn/i.test(document.getElementById("queue").textContent), null, {
    timeout: 10_000,
  });
  await page.waitForFunction(() => !document.getElementById("buy").disabled);
  await page.click("#buy");
  await page.waitForFunction(() => /You got it!/.test(document.getElementById("outcome").textContent));
  await context.close();
});

test("the admin signs in, creates a sale, and its charts show a small flood live", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1100 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  page.on("dialog", (d) => d.accept());
  await page.goto(`${server.base}/admin`);
  await page.fill("#admin-token", "wrong");
  await page.click("#login-form button[type=submit]");
  await page.waitForFunction(() => /not the admin token/.test(document.getElementById("login-message").textContent));
  await page.fill("#admin-token", ADMIN);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#app:not([hidden])");
  await page.fill("#c-item", "Dashboard drop");
  await page.fill("#c-stock", "300");
  await page.fill("#c-limit", "1");
  await page.fill("#c-starts", "0");
  await page.click("#create button[type=submit]");
  await page.waitForFunction(() => /Created “Dashboard drop”/.test(document.getElementById("notice").textContent));
  const saleId = (await page.textContent("#notice")).match(/sale (\d+)/)[1];
  await page.waitForSelector(`#sales tr[data-sale-id="${saleId}"]`);
  await page.waitForSelector("#live:not([hidden])");
  // A small flood: 400 buyers for 300 units, 8 at a time, over about 5 s
  // (so the charts have a few readings of it).
  const buyers = tokens("flood", 400);
  let next = 0;
  const statuses = [];
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < buyers.length) {
        const t = buyers[next++];
        const r = await call(server.base, "POST", `/api/v1/sales/${saleId}/purchase`, {
          auth: t,
          body: { quantity: 1 },
          headers: { "Idempotency-Key": `k-${next}` },
        });
        statuses.push(r.status);
        await new Promise((ok) => setTimeout(ok, 100));
      }
    }),
  );
  assert.equal(statuses.filter((s) => s === 201).length, 300);
  assert.equal(statuses.filter((s) => s === 409).length, 100);
  const max = (id) => page.evaluate((id) => Number(document.getElementById(id).dataset.max || 0), id);
  await page.waitForFunction(() => Number(document.getElementById("chart-attempts").dataset.max || 0) > 0);
  await page.waitForFunction(() => Number(document.getElementById("chart-writer").dataset.max || 0) >= 300);
  assert.ok((await max("chart-stock")) >= 1);
  await page.waitForFunction(() => Number(document.getElementById("chart-latency").dataset.points || 0) >= 2);
  await page.waitForFunction(() => /0 \/ 300/.test(document.getElementById("tiles").textContent));
  await screenshot(page, "admin-live.png", { fullPage: true });
  // Close an upcoming sale early from the table.
  const later = await createSale(server.base, { item: "Closes early", stock: 5, starts_at: iso(Date.now() + 600_000) });
  await page.waitForSelector(`#sales tr[data-sale-id="${later.id}"]`);
  await page.click(`#sales tr[data-sale-id="${later.id}"] button[aria-label="Close Closes early now"]`);
  await page.waitForFunction(() => /closed/.test(document.getElementById("notice").textContent));
  const read = await call(server.base, "GET", `/api/v1/sales/${later.id}`);
  assert.equal(read.body.status, "ended");
  assert.deepEqual(errors, []);
  await context.close();
});

test("the admin opens an upcoming sale early: the buyer's page turns on live", async () => {
  const sale = await createSale(server.base, {
    item: "Early bird",
    stock: 3,
    starts_at: iso(Date.now() + 3_600_000),
  });
  const buyer = await buyerPage(sale.id, "jules");
  assert.equal(await buyer.page.textContent("#status"), "Starts soon");
  assert.ok(await buyer.page.isDisabled("#buy"));
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const admin = await context.newPage();
  admin.on("dialog", (d) => d.accept());
  await admin.goto(`${server.base}/admin`);
  await admin.fill("#admin-token", ADMIN);
  await admin.click("#login-form button[type=submit]");
  await admin.waitForSelector(`#sales tr[data-sale-id="${sale.id}"]`);
  await admin.click(`#sales tr[data-sale-id="${sale.id}"] button[aria-label="Open Early bird now"]`);
  await admin.waitForFunction(() => /open now/.test(document.getElementById("notice").textContent));
  // No reload: the sale's stream tells the page.
  await buyer.page.waitForFunction(() => document.getElementById("status").textContent === "On sale now", null, {
    timeout: 5_000,
  });
  await buyer.page.waitForFunction(() => !document.getElementById("buy").disabled);
  await buyer.page.click("#buy");
  await buyer.page.waitForFunction(() => /You got it!/.test(document.getElementById("outcome").textContent));
  await context.close();
  await buyer.context.close();
});
