// The browser tests' harness: the real `flashsale` binary on a random port
// (embedded default, demo mode on, a fresh data directory), Debian's
// Chromium driven by playwright-core, and a few API helpers.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = process.env.FLASHSALE_BIN || join(ROOT, "target/debug/flashsale");
// target/screenshots by default; `scripts/browser-tests.sh --screenshots`
// writes the README's, docs/screenshots.
export const SCREENSHOTS = resolve(ROOT, process.env.SCREENSHOT_DIR || "target/screenshots");
export const ADMIN = "browser-admin-token";
const SECRET = "browser-test-secret";

/** Starts the server; resolves to {base, stop}. */
export async function startServer(extra = []) {
  const dir = mkdtempSync(join(tmpdir(), "flashsale-browser-"));
  const child = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--data-dir", dir, "--demo", ...extra], {
    env: {
      ...process.env,
      FLASHSALE_ADMIN_TOKEN: ADMIN,
      FLASHSALE_JWT_SECRET: SECRET,
      RUST_LOG: process.env.RUST_LOG || "warn",
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const base = await new Promise((ok, fail) => {
    let out = "";
    const timer = setTimeout(() => fail(new Error(`no "listening" line in 20 s: ${out}`)), 20_000);
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/flashsale listening on (http:\/\/[\d.:]+)/);
      if (m) {
        clearTimeout(timer);
        ok(m[1]);
      }
    });
    child.on("exit", (code) => fail(new Error(`flashsale exited (${code}): ${out}`)));
  });
  child.stdout.resume();
  return {
    base,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Headless Debian Chromium (the flags this machine needs: see the env notes). */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Buyer tokens minted by the binary itself (`flashsale token`). */
export function tokens(user, count) {
  const out = execFileSync(BIN, ["token", "--user", user, "--count", String(count)], {
    env: { ...process.env, FLASHSALE_JWT_SECRET: SECRET },
  });
  return out.toString().trim().split("\n");
}

/** One buyer's token for `user`. */
export function token(user) {
  return execFileSync(BIN, ["token", "--user", user], {
    env: { ...process.env, FLASHSALE_JWT_SECRET: SECRET },
  })
    .toString()
    .trim();
}

/** A JSON API call; resolves to {status, body}. */
export async function call(base, method, path, { auth, body, headers = {} } = {}) {
  const h = { ...headers };
  if (auth) h.Authorization = `Bearer ${auth}`;
  if (body !== undefined) h["Content-Type"] = "application/json";
  const res = await fetch(base + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null };
}

/** Creates a sale as the admin; resolves to its body. */
export async function createSale(base, fields) {
  const r = await call(base, "POST", "/api/v1/sales", { auth: ADMIN, body: fields });
  if (r.status !== 201) throw new Error(`create sale: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** Saves a screenshot under SCREENSHOTS. */
export async function screenshot(page, name, options = {}) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, name), ...options });
}
