// One visit of a real user to a page that loads posthog-js, in Debian's Chromium driven by
// puppeteer-core, for tests/tests/browser.rs.
//
// The page is served from an origin of its own (another port than capture's), so every
// request to capture is cross-origin, as on a customer's site. It loads posthog-js's
// npm build (dist/array.full.js, which bundles the recorder: capture does not serve SDK
// scripts), lets the SDK fetch its config from capture, then: waits for the $pageview and
// the session recording to start, clicks a nested element (autocapture), types into an
// input (recorded), identifies the user with $set, sends a custom event, waits for the
// flushes, takes a screenshot and leaves the page (the $pageleave goes by sendBeacon).
//
// Usage: node run.mjs CAPTURE_URL TOKEN DISTINCT_ID SCREENSHOT_PATH
// Prints one JSON line: the session id, the requests the page made to capture (url,
// method, resource type, content type, status), the beacons it sent while unloading
// ("url sent?"), the errors in its console.
import http from "node:http";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import puppeteer from "puppeteer-core";

const [capture, token, distinctId, screenshot] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const sdk = readFileSync(require.resolve("posthog-js/dist/array.full.js"));
const sdkVersion = JSON.parse(readFileSync(require.resolve("posthog-js/package.json"))).version;

const page_html = `<!doctype html>
<html><head><meta charset="utf-8"><title>Sluice shop</title>
<script>
  // Beacons sent while the page unloads are out of the driver's sight: each one is also
  // reported to this page's own server.
  const beacon = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = (url, data) => {
    const sent = beacon(url, data);
    beacon("/beacons", String(url) + " " + sent);
    return sent;
  };
</script>
<script src="/posthog.js"></script>
<script>
  posthog.init(${JSON.stringify(token)}, {
    api_host: ${JSON.stringify(capture)},
    capture_pageview: true,
    capture_pageleave: true,
    autocapture: true,
    session_recording: { maskAllInputs: false },
    // A browser driven by puppeteer says so (navigator.webdriver), and posthog-js drops
    // the events of bots; its own advice for end-to-end tests is this setting.
    opt_out_useragent_filter: true,
    loaded: () => { window.__posthogLoaded = true },
  });
</script></head>
<body>
  <h1>Sluice shop</h1>
  <div id="shop" class="shop area">
    <a href="#checkout" class="link">
      <button id="buy" class="btn primary" data-attr="buy-button">Buy <span class="label">now</span></button>
    </a>
  </div>
  <form onsubmit="return false"><input id="email" name="email" type="text" placeholder="email"></form>
</body></html>`;

const beacons = [];
const server = http.createServer((req, res) => {
  if (req.url === "/beacons") {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      beacons.push(body);
      res.writeHead(204);
      res.end();
    });
    return;
  }
  if (req.url === "/posthog.js") {
    res.writeHead(200, { "content-type": "application/javascript" });
    return res.end(sdk);
  }
  if (req.url === "/favicon.ico") {
    res.writeHead(204);
    return res.end();
  }
  if (req.url === "/" || req.url.startsWith("/?")) {
    res.writeHead(200, { "content-type": "text/html" });
    return res.end(page_html);
  }
  res.writeHead(404);
  res.end();
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
const requests = [];
const errors = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 700 });
  page.on("request", (r) => {
    if (r.url().startsWith(capture)) {
      const contentType = r.headers()["content-type"];
      requests.push({ url: r.url(), method: r.method(), type: r.resourceType(), contentType });
    }
  });
  page.on("response", (r) => {
    const seen = requests.findLast((q) => q.url === r.url() && q.status === undefined);
    if (seen) seen.status = r.status();
    if (r.status() >= 400) errors.push(`${r.status()} from ${r.url()}`);
  });
  page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("console", (m) => {
    // A failed load is reported above with its address.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(String(e)));

  await page.goto(origin + "/", { waitUntil: "load" });
  await page.waitForFunction(() => window.__posthogLoaded === true, { timeout: 15000 });
  // Recording starts once the config from capture says so.
  await page
    .waitForFunction(() => window.posthog.sessionRecordingStarted(), { timeout: 15000 })
    .catch(() => errors.push("session recording did not start within 15 s"));
  const sessionId = await page.evaluate(() => window.posthog.get_session_id());
  await sleep(500);
  await page.click("#buy span.label");
  await page.type("#email", "ada@example.com", { delay: 20 });
  await page.evaluate((id) => {
    window.posthog.identify(id, { email: "ada@example.com", plan: "pro" });
    window.posthog.capture("checkout started", { cart_value: 42, currency: "EUR" });
  }, distinctId);
  // The event queue and the recording buffer flush every few seconds.
  await sleep(6000);
  await page.screenshot({ path: screenshot });
  // Leaving the page: the SDK sends $pageleave by sendBeacon as it unloads.
  await page.goto("about:blank", { waitUntil: "load" });
  await sleep(1500);
  console.log(JSON.stringify({ sessionId, origin, sdkVersion, requests, beacons, errors }));
} finally {
  await browser.close();
  server.close();
}
