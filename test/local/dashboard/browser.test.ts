/**
 * The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by playwright-core) opens the page
 * served over a local stack (embedded IoT Hub, Azurite, the aggregation Function's handlers, four devices running
 * the real modules). It renders the fleet (a row per device, from the module twins), and when a round of the job
 * closes the new round appears on the same page without a reload (server-sent events); a click on a device opens
 * its history. A dashboard whose Function cannot be reached shows the coded error on the page and keeps serving.
 * Without Chromium the test fails saying how to install it.
 */
import { afterAll, beforeAll, expect, test } from "@jest/globals";
import { chromium, type Browser, type Page } from "playwright-core";
import { chromiumPath } from "../../../local/dashboard/chromium";
import { startDashboard, type Dashboard } from "../../../local/dashboard/server";
import { functionApi, twinSource } from "../../../local/dashboard/sources";
import {
  createJob,
  startFaultFleet,
  startJob,
  stopFaultFleet,
  type FaultFleet,
} from "../stack/fault-support";

let browser: Browser;
let f: FaultFleet;
const dashboards: Dashboard[] = [];

beforeAll(async () => {
  let executablePath: string;
  try {
    executablePath = chromiumPath();
  } catch (e) {
    // chromiumPath's message says how to install it (apt-get install -y chromium).
    throw new Error(`the dashboard's browser test needs headless Chromium: ${(e as Error).message}`);
  }
  [browser, f] = await Promise.all([
    chromium.launch({ executablePath, headless: true }),
    startFaultFleet(4, 20),
  ]);
});

afterAll(async () => {
  await browser?.close();
  for (const d of dashboards) await d.close();
  if (f) await stopFaultFleet(f);
});

async function open(d: Dashboard): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems: string[] = [];
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(m.text());
  });
  await page.goto(d.url);
  (page as Page & { problems?: string[] }).problems = problems;
  return page;
}

test("renders the fleet and shows a closed round live, without a reload; a device's history on click", async () => {
  const d = await startDashboard({
    functionApi: functionApi({ url: f.stack.host.url }),
    twins: twinSource({
      connectionString: f.stack.hub.serviceConnectionString,
      caCertPem: f.stack.hub.caCertPem,
    }),
    port: 0,
    functionIntervalMs: 200,
    hubIntervalMs: 300,
  });
  dashboards.push(d);
  const page = await open(d);
  // The fleet, from the module twins: one row per device, all online.
  await page.waitForFunction('document.querySelectorAll("#devices tr[data-device]").length === 4');
  const ids = await page.$$eval("#devices tr[data-device]", (rows) =>
    rows.map((r) => r.getAttribute("data-device")),
  );
  expect(ids).toEqual(f.deviceIds);
  await page.waitForFunction(
    '[...document.querySelectorAll("#devices tr[data-device]")].every((r) => r.textContent.includes("online"))',
  );
  expect(await page.locator("#rounds tr[data-round]").count()).toBe(0);

  // A marker on this very page: a reload would lose it.
  await page.evaluate("window.marker = 42");
  await createJob(f, {
    jobId: "dash-live",
    clientsPerRound: 2,
    rounds: 2,
    roundDeadlineSeconds: 120,
    minCompletedFraction: 1,
  });
  await startJob(f, "dash-live");
  await page.waitForSelector('#rounds tr[data-round="1"]', { timeout: 120_000 });
  await page.waitForSelector('#rounds tr[data-round="2"]', { timeout: 120_000 });
  expect(await page.evaluate("window.marker")).toBe(42);
  await page.waitForFunction('document.querySelector("#job").textContent.includes("completed")');
  const job = await page.textContent("#job");
  expect(job).toContain("dash-live");
  // The accuracy chart has one point per round (training metrics: no fleet-wide evaluation in these records).
  const accPoints = await page.evaluate('Chart.getChart("acc").data.labels');
  expect(accPoints).toEqual([1, 2]);
  expect(await page.getAttribute('#rounds tr[data-round="1"]', "data-source")).toBe("training");

  // A device that took part: its history lists its rounds.
  const trained = await page.$$eval("#devices tr[data-device]", (rows) =>
    rows.filter((r) => r.textContent!.includes("dash-live")).map((r) => r.getAttribute("data-device")),
  );
  expect(trained.length).toBeGreaterThan(0);
  await page.click(`#devices tr[data-device="${trained[0]}"]`);
  await page.waitForSelector(`#history[data-device="${trained[0]}"] #history-rounds tr[data-round]`);
  expect(await page.textContent("#history-title")).toBe(`Device ${trained[0]}`);
  expect((page as Page & { problems?: string[] }).problems).toEqual([]);
  await page.close();
});

test("an unreachable Function is a coded line on the page; the fleet still shows", async () => {
  const d = await startDashboard({
    functionApi: functionApi({ url: "http://127.0.0.1:9" }),
    twins: twinSource({
      connectionString: f.stack.hub.serviceConnectionString,
      caCertPem: f.stack.hub.caCertPem,
    }),
    startErrors: [{ source: "extra", code: "E_DASHBOARD_CONFIG", message: "shown as given" }],
    port: 0,
    functionIntervalMs: 200,
    hubIntervalMs: 300,
  });
  dashboards.push(d);
  const page = await open(d);
  const err = await page.waitForSelector('#errors .error[data-code="E_DASHBOARD_FUNCTION_UNREACHABLE"]');
  expect(await err.textContent()).toMatch(
    /^E_DASHBOARD_FUNCTION_UNREACHABLE: GET http:\/\/127\.0\.0\.1:9\/api\/jobs: /,
  );
  expect(await page.textContent('#errors .error[data-code="E_DASHBOARD_CONFIG"]')).toBe(
    "E_DASHBOARD_CONFIG: shown as given",
  );
  await page.waitForFunction('document.querySelectorAll("#devices tr[data-device]").length === 4');
  await page.close();
});
