// The main journeys through the web UI in a real browser (Debian's Chromium
// driven by playwright-core), against a real server with the mock model
// server and the fake forge. Started by crates/viberglass/tests/ui.rs, which
// passes everything in the environment and checks the server side after.
//
// First-run setup → secrets → integration (Test connection) → project →
// clanker (Start) → ticket → research with live logs → Approve & Continue →
// planning with a line comment → Approve & Continue → execution → the PR
// link; then a run that fails, with its cause and fix. Screenshots of the
// main pages go to $SCREENSHOT_DIR.

import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const require = createRequire(env("NODE_MODULES") + "/");
const { chromium } = require("playwright-core");

const base = env("BASE_URL");
const shots = env("SCREENSHOT_DIR");
mkdirSync(shots, { recursive: true });

const step = (text) => console.log(`journey: ${text}`);
const fail = (text) => { throw new Error(text); };

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: "light" });
context.setDefaultTimeout(20_000);
const page = await context.newPage();
page.on("pageerror", (error) => console.log(`journey: page error: ${error.message}`));
const shot = async (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
// Opens `url` until `selector` shows (a run may end before or after the page loads).
const until = async (url, selector, seconds) => {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    try {
      await page.goto(url);
    } catch (error) {
      // The page's own script may reload it when the run ends: that navigation wins, and we look again.
      // (Chromium says either that, or ERR_ABORTED for the load the reload cut short.)
      if (!/interrupted by another navigation|net::ERR_ABORTED/.test(String(error))) throw error;
      await page.waitForLoadState();
    }
    if (await page.$(selector)) return;
    if (Date.now() > deadline) fail(`${selector} did not show on ${url} within ${seconds} s`);
    await page.waitForTimeout(1000);
  }
};

try {
  step("first-run setup");
  await page.goto(base + "/");
  if (!page.url().endsWith("/setup")) fail(`a new server should ask for setup, not ${page.url()}`);
  await shot("setup");
  await page.fill("#setup [name=name]", "Ada Admin");
  await page.fill("#setup [name=email]", "ada@example.com");
  // Too short first: the error shows beside the field, the page stays.
  await page.fill("#setup [name=password]", "short");
  await page.click("#setup button[type=submit]");
  await page.waitForSelector("#fe-setup-password:not(:empty)");
  await page.fill("#setup [name=password]", "a-long-admin-password");
  await page.click("#setup button[type=submit]");
  await page.waitForURL(base + "/");
  await page.waitForSelector("#getting-started");
  await shot("dashboard-new");

  step("secrets");
  await page.goto(base + "/secrets");
  await page.fill("#secret [name=name]", "bad name");
  await page.click("#secret button[type=submit]");
  await page.waitForSelector("#fe-secret-name:not(:empty)");
  for (const [name, variable] of [["ANTHROPIC_API_KEY", "VG_MODEL_KEY"], ["FORGE_TOKEN", "VG_FORGE_TOKEN"]]) {
    await page.goto(base + "/secrets");
    await page.fill("#secret [name=name]", name);
    await page.selectOption("#secret [name=backend]", "env");
    await page.fill("#secret [name='reference:skip']", variable);
    await page.click("#secret button[type=submit]");
    await page.waitForSelector(`#secret-${name}`);
  }
  await page.click("#secret-ANTHROPIC_API_KEY button:has-text('Test')");
  await page.waitForSelector("#test-ANTHROPIC_API_KEY .test-result");
  const secretTest = await page.textContent("#test-ANTHROPIC_API_KEY .test-result");
  if (!secretTest.includes("Works")) fail(`the secret test failed: ${secretTest}`);
  await shot("secrets");

  step("integration and Test connection");
  await page.goto(base + "/integrations");
  await page.fill("#integration [name=name]", "forge");
  await page.selectOption("#integration [name=kind]", "github");
  await page.fill("#integration [name='base_url:skip']", env("FORGE_URL"));
  await page.selectOption("#integration [name='credential_secret:opt']", "FORGE_TOKEN");
  await page.click("#integration button[type=submit]");
  await page.waitForSelector("text=Test connection");
  await page.fill("input[aria-label='Repository to check']", "acme/shop");
  await page.click("button:has-text('Test connection')");
  await page.waitForSelector("#test-forge .test-result");
  const access = await page.textContent("#test-forge .test-result");
  if (!access.includes("Works") || !access.includes("can open pull requests")) fail(`Test connection: ${access}`);
  await shot("integrations");

  step("project");
  await page.goto(base + "/projects/new");
  await page.fill("#project [name=name]", "Shop");
  await page.fill("#project [name='repository_url:opt']", env("CLONE_URL"));
  await page.selectOption("#project [name='scm_integration:opt']", "forge");
  await page.click("#project button[type=submit]");
  await page.waitForURL(base + "/projects/shop");
  await shot("project");

  step("clanker");
  await page.goto(base + "/clankers/new");
  await page.fill("#clanker [name=name]", "Claude");
  await page.selectOption("#clanker [name=agent]", "claude-code");
  await page.fill("#clanker [name='agent_settings:json']", "{ not json");
  await page.click("#clanker button[type=submit]");
  await page.waitForSelector("#fe-clanker-agent_settings:not(:empty)");
  await page.fill("#clanker [name='agent_settings:json']", JSON.stringify({
    base_url: env("MODEL_URL"), binary: env("CLAUDE_BIN"), model: "claude-test-model" }));
  await page.check("#clanker input[value=ANTHROPIC_API_KEY]");
  await page.check("#clanker input[name='projects:list'][value=shop]");
  await page.click("#clanker button[type=submit]");
  await page.waitForURL(base + "/clankers/claude");
  await Promise.all([page.waitForNavigation(), page.click("#start-clanker")]);
  await page.waitForSelector("#clanker-status.active", { timeout: 60_000 });
  await shot("clanker");

  step("ticket");
  await page.goto(base + "/projects/shop/tickets/new");
  await page.fill("#ticket [name=title]", "Give the readme a title");
  await page.fill("#ticket [name=description]", "The README starts without a heading.");
  await page.setInputFiles("#ticket input[type=file]", {
    name: "error.log", mimeType: "text/plain", buffer: Buffer.from("README.md: line 1: expected a heading\n") });
  await page.click("#ticket button[type=submit]");
  await page.waitForURL(/\/tickets\/[0-9a-f-]{36}$/);
  const ticketUrl = page.url();
  if (!(await page.textContent("#attachments")).includes("error.log")) fail("the attachment is not listed");

  step("research, with its log live");
  await page.selectOption("#run [name=phase]", "research");
  await Promise.all([page.waitForNavigation(), page.click("#run button[type=submit]")]);
  await page.waitForSelector("#live-log .line", { timeout: 60_000 });
  const endedEarly = await page.getAttribute("#live-log", "data-ended");
  if (endedEarly) fail("the log appeared only after the run ended");
  await shot("live-log");
  await page.waitForSelector("#document", { timeout: 120_000 });
  if (!(await page.textContent("#document")).includes("Findings")) fail("RESEARCH.md is not shown");
  await shot("ticket-research");

  step("Approve & Continue to planning");
  await Promise.all([page.waitForNavigation(), page.click("#approve-and-continue")]);
  // PLAN.md can show while its run is still live; the page reloads when that run ends, which would wipe a form
  // filled before. So wait for the document with no live run beside it.
  await until(ticketUrl + "?tab=planning", "body:not(:has(#live-run)) #document", 120);
  if (!(await page.textContent("#document")).includes("Plan")) fail("PLAN.md is not shown");
  // A comment on line 2, picked by clicking the line.
  await page.click("#document li[data-line='2']");
  await page.fill("#comment-form [name=body]", "Keep the existing text below the title.");
  await page.click("#comment-form button[type=submit]");
  await page.waitForSelector(".comment:has-text('Keep the existing text')");
  await shot("ticket-plan");

  step("Approve & Continue to execution");
  await Promise.all([page.waitForNavigation(), page.click("#approve-and-continue")]);
  await until(ticketUrl, "#pull-request-link", 180);
  const pr = await page.getAttribute("#pull-request-link", "href");
  if (!pr.includes("/pull/")) fail(`the PR link is ${pr}`);
  await page.goto(ticketUrl + "?tab=runs");
  await shot("ticket-pr");
  console.log(`journey: pull request ${pr}`);

  step("a run that fails shows its cause and fix");
  await page.goto(base + "/projects/new");
  await page.fill("#project [name=name]", "Broken");
  await page.fill("#project [name='repository_url:opt']", env("MISSING_CLONE_URL"));
  await page.click("#project button[type=submit]");
  await page.waitForURL(base + "/projects/broken");
  // The clanker runs only where it is allowed: let it run in the new project too.
  await page.goto(base + "/clankers/claude/edit");
  await page.check("#clanker input[name='projects:list'][value=broken]");
  await page.click("#clanker button[type=submit]");
  await page.waitForURL(base + "/clankers/claude");
  await page.goto(base + "/projects/broken/tickets/new");
  await page.fill("#ticket [name=title]", "Anything");
  await page.click("#ticket button[type=submit]");
  await page.waitForURL(/\/tickets\/[0-9a-f-]{36}$/);
  await Promise.all([page.waitForNavigation(), page.click("#run button[type=submit]")]);
  await until(page.url(), "#failure", 120);
  const cause = await page.textContent("#failure");
  if (!cause.includes("clone")) fail(`the failure does not name the clone step: ${cause}`);
  await page.click("#failure a:has-text('Open the run')");
  await page.waitForSelector("#failure-message");
  const fix = await page.textContent("#failure");
  if (!fix.includes("clone") || !/repository|URL|access/i.test(fix)) fail(`the run page does not say what to do: ${fix}`);
  await shot("job-failed");

  step("the dashboard shows it all");
  await page.goto(base + "/");
  const dashboard = await page.textContent("main");
  if (!dashboard.includes("Failures needing attention") || !dashboard.includes("clone")) fail("the failure is not on the dashboard");
  await shot("dashboard");
  await page.goto(base + "/audit");
  await shot("audit");

  step("a ticket source, its deliveries and a redelivery");
  await page.goto(base + "/projects/shop/webhooks");
  if (!(await page.textContent("main")).includes("No ticket source yet")) fail("no empty state for ticket sources");
  await page.selectOption("#webhook [name=provider]", "custom");
  await Promise.all([page.waitForNavigation(), page.click("#webhook button[type=submit]")]);
  const secret = (await page.textContent("#shown-once")).trim();
  if (secret.length < 16) fail(`the generated secret is not shown once: '${secret}'`);
  await Promise.all([page.waitForNavigation(), page.click("text=Done")]);
  const hookPath = (await page.textContent("table td.mono")).trim().replace(base, "");
  const send = async (key, title) => {
    const body = JSON.stringify({ title, external_id: title });
    const sig = createHmac("sha256", key).update(body).digest("hex");
    return fetch(base + hookPath, { method: "POST", body,
      headers: { "content-type": "application/json", "x-webhook-signature-256": `sha256=${sig}` } });
  };
  if ((await send(secret, "Filed from the support desk")).status !== 200) fail("a signed delivery was not accepted");
  if ((await send("not-the-secret-at-all", "Signed with the wrong secret")).status !== 401) fail("a bad signature was accepted");
  await page.reload();
  const log = await page.textContent("#deliveries");
  if (!log.includes("processed") || !log.includes("rejected") || !log.includes("the shared secret differs")) {
    fail(`the deliveries do not say what happened: ${log}`);
  }
  await page.click("details[id^=edit-] summary");
  await page.fill("details[id^=edit-] [name=bot_name]", "shopbot");
  await page.fill("details[id^=edit-] [name='severity_labels:json']", '{"prod-down": "critical"}');
  await Promise.all([page.waitForNavigation(), page.click("details[id^=edit-] button[type=submit]")]);
  if (!(await page.inputValue("details[id^=edit-] [name=bot_name]")).includes("shopbot")) fail("the change was not saved");
  await shot("webhooks");
  await page.click("#deliveries a.mono");
  await page.waitForURL(/\/tickets\/[0-9a-f-]{36}$/);
  if (!(await page.textContent("h1")).includes("Filed from the support desk")) fail("the delivery's ticket is not linked");

  step("an outbound webhook: subscribe, send a test event, see it delivered and verified");
  const received = [];
  const receiver = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => { received.push({ headers: req.headers, body }); res.writeHead(200); res.end("thanks"); });
  });
  await new Promise((ok) => receiver.listen(0, "127.0.0.1", ok));
  const hookUrl = `http://127.0.0.1:${receiver.address().port}/hook`;
  await page.goto(base + "/webhook-subscriptions");
  if (!(await page.textContent("main")).includes("No subscription yet")) fail("no empty state for subscriptions");
  await page.fill("#subscription [name=url]", hookUrl);
  await page.check("#subscription [name='allow_private:bool'][type=checkbox]");
  await Promise.all([page.waitForNavigation(), page.click("#subscription button[type=submit]")]);
  const signing = (await page.textContent("#shown-once")).trim();
  if (!signing.startsWith("whsec_")) fail(`the generated signing secret is not shown once: '${signing}'`);
  await Promise.all([page.waitForNavigation(), page.click("text=Done")]);
  await page.waitForURL(/\/webhook-subscriptions\/[0-9a-f-]{36}$/);
  if (!(await page.textContent("main")).includes("No deliveries yet")) fail("no empty state for deliveries");
  await Promise.all([page.waitForNavigation(), page.click("button:has-text('Send test event')")]);
  const testEvent = () => received.find((r) => JSON.parse(r.body).type === "webhook.test");
  for (let i = 0; i < 50 && !testEvent(); i++) await new Promise((ok) => setTimeout(ok, 100));
  if (!testEvent()) fail("the receiver got no test event");
  const got = testEvent();
  const key = Buffer.from(signing.slice("whsec_".length), "base64");
  const expected = createHmac("sha256", key)
    .update(`${got.headers["webhook-id"]}.${got.headers["webhook-timestamp"]}.${got.body}`).digest("base64");
  if (!got.headers["webhook-signature"].split(" ").includes(`v1,${expected}`)) fail("the test event's signature does not verify");
  if (JSON.parse(got.body).type !== "webhook.test") fail(`not a test event: ${got.body}`);
  let page_text = "";
  for (let i = 0; i < 30; i++) {
    await page.reload();
    page_text = await page.textContent("main");
    if (page_text.includes("succeeded")) break;
    await new Promise((ok) => setTimeout(ok, 200));
  }
  if (!page_text.includes("succeeded") || !page_text.includes("webhook.test")) fail(`the delivery is not shown: ${page_text}`);
  await page.click("details.delivery summary");
  if (!(await page.textContent("table.attempts")).includes("200")) fail("the attempt is not shown with its answer");
  await shot("outbound-webhook");
  receiver.close();

  step("in the dark");
  await page.emulateMedia({ colorScheme: "dark" });
  await page.goto(ticketUrl + "?tab=planning");
  await shot("ticket-dark");
  await page.emulateMedia({ colorScheme: "light" });

  step("on a phone");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(ticketUrl);
  await shot("ticket-phone");
  step("done");
} catch (error) {
  await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  console.error(`journey failed at ${page.url()}: ${error.stack || error}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
