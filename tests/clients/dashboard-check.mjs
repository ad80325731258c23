// Drives the dashboard in Debian's headless Chromium, as a person would:
// signs in with a token, reads the orgs table, picks a metadata key, opens a
// job's live log and waits for a line the test writes meanwhile. Prints one JSON
// object per step on stdout; the Rust test (tests/e2e/tests/e2e/dashboard.rs)
// reads them, and writes the log line when it sees {"step": "following"}.
//
//   node dashboard-check.mjs URL TOKEN JOB_ID MARKER SCREENSHOT.png
import puppeteer from "puppeteer-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, token, jobId, marker, screenshot] = process.argv.slice(2);
const say = (object) => console.log(JSON.stringify(object));

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync",
         `--user-data-dir=${mkdtempSync(join(tmpdir(), "nimbus-chromium-"))}`],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 1000 });
  const problems = [];
  page.on("pageerror", (error) => problems.push(String(error)));
  // Script errors only: the sign-in page's 401 and the favicon's 404 are
  // logged as "Failed to load resource" and are what the server means.
  page.on("console", (message) => {
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      problems.push(message.text());
    }
  });

  const first = await page.goto(`${url}/dashboard`, { waitUntil: "load" });
  say({ step: "login-page", status: first.status(), form: (await page.$("form.login")) !== null });

  await page.type("#token", token);
  await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click("form.login button")]);
  const rows = async (selector) =>
    page.$$eval(selector, (trs) => trs.map((tr) => Array.from(tr.cells, (td) => td.textContent.trim())));
  say({ step: "signed-in", url: page.url(), orgs: await rows("#orgs tbody tr"),
        charts: await page.$$eval("#charts svg", (svgs) => svgs.length),
        cookieVisibleToScript: await page.evaluate(() => document.cookie) });

  await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.select("#metadata_key", "lr")]);
  say({ step: "picked-lr", url: page.url(), buckets: await rows("#buckets tbody tr") });
  await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.select("#metadata_key", "batch")]);
  say({ step: "picked-batch", buckets: await rows("#buckets tbody tr") });

  await page.goto(`${url}/dashboard?log=${jobId}#log`, { waitUntil: "load" });
  await page.waitForFunction(
    () => document.getElementById("live-log-state")?.textContent === "following", { timeout: 15000 });
  say({ step: "following" });
  await page.waitForFunction(
    (text) => Array.from(document.querySelectorAll("#live-log .log-line")).some((l) => l.textContent === text),
    { timeout: 20000 }, marker);
  const lines = await page.$$eval("#live-log .log-line", (ls) => ls.map((l) => l.textContent));
  await page.screenshot({ path: screenshot, fullPage: true });
  say({ step: "live-line", lines, problems });
} finally {
  await browser.close();
}
