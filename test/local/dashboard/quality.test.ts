/**
 * Contribution quality on the dashboard, in headless Chromium: the Function's job API (its real handlers, over an
 * in-memory store, after a round in which two devices sent sign-flipped updates) and the fleet's module twins; the
 * fleet table marks the excluded devices (the reason in the badge's title) and a device's history lists its
 * anomalies. The model functions are checked beside it.
 */
import { afterAll, beforeAll, expect, test } from "@jest/globals";
import { chromium, type Browser } from "playwright-core";
import { chromiumPath } from "../../../local/dashboard/chromium";
import { startDashboard } from "../../../local/dashboard/server";
import { qualityViews, FleetHistory } from "../../../local/dashboard/model";
import type { FunctionApi, JobDetail, JobSummary, TwinSource } from "../../../local/dashboard/sources";
import { get, startJob, world, type World } from "../../cloud/aggregator/support";
import { DEVICES, runRound } from "../../cloud/aggregator/quality-support";

let browser: Browser;
beforeAll(async () => {
  browser = await chromium.launch({ executablePath: chromiumPath(), headless: true });
});
afterAll(async () => {
  await browser?.close();
});

const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;

/** The Function's job API through its own HTTP handlers (no network). */
function handlersApi(w: World): FunctionApi {
  return {
    url: "memory://function",
    listJobs: async () =>
      ((await w.agg.http.listJobs(get("/api/jobs"), ctxStub)).jsonBody as { jobs: JobSummary[] }).jobs,
    getJob: async (id) =>
      (await w.agg.http.getJob(get(`/api/jobs/${id}`, { id }), ctxStub)).jsonBody as JobDetail,
  };
}

/** The fleet's trainer module twins, connected. */
function twins(ids: readonly string[]): TwinSource {
  return {
    hubName: "memory-hub",
    moduleTwins: async () =>
      ids.map((deviceId) => ({
        deviceId,
        moduleId: "trainer",
        connectionState: "Connected",
        properties: { reported: { flotilla: { status: "idle", numSamples: 100 } } },
      })),
  };
}

test("the fleet table marks excluded devices with their reason; a device's history lists its anomalies", async () => {
  const w = world(DEVICES);
  const id = await startJob(w, {
    rounds: 3,
    strategyOptions: { clientsPerRound: 6, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    quality: "1/2:2",
  });
  await w.agg.roundTimer({}, ctxStub);
  await runRound(w, id, 1, true);

  // The model: the job detail's quality by device.
  const detail = await handlersApi(w).getJob(id);
  const q = qualityViews(detail);
  expect(q["dev-e"]!.excluded!.since).toBe(2);
  expect(q["dev-a"]!.excluded).toBeNull();
  expect(q["dev-a"]!.flagged).toBe(0);
  const h = new FleetHistory();
  h.observeJob(detail);
  expect(h.history("dev-e")).toBeUndefined(); // never seen in the twins or a round yet
  h.observeDevices([], 0);

  const d = await startDashboard({
    functionApi: handlersApi(w),
    twins: twins(DEVICES),
    port: 0,
    functionIntervalMs: 100,
    hubIntervalMs: 100,
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const problems: string[] = [];
  page.on("pageerror", (e) => problems.push(e.message));
  try {
    await page.goto(d.url);
    await page.waitForSelector('#devices tr[data-device="dev-e"][data-quality="excluded"]');
    const states = await page.$$eval("#devices tr[data-device]", (rows) =>
      rows.map((r) => [r.getAttribute("data-device"), r.getAttribute("data-quality")]),
    );
    expect(states).toEqual([
      ["dev-a", "ok"],
      ["dev-b", "ok"],
      ["dev-c", "ok"],
      ["dev-d", "ok"],
      ["dev-e", "excluded"],
      ["dev-f", "excluded"],
    ]);
    const title = await page.getAttribute('#devices tr[data-device="dev-f"] .qbadge.excluded', "title");
    expect(title).toMatch(/flagged in 1 of its last 1 contributions \(E_QUALITY_DIRECTION/);
    await page.click('#devices tr[data-device="dev-e"]');
    await page.waitForSelector(
      '#history[data-device="dev-e"] #history-anomalies tr[data-code="E_QUALITY_DIRECTION"]',
    );
    const cells = await page.$$eval("#history-anomalies tr[data-code] td", (tds) =>
      tds.map((t) => t.textContent),
    );
    expect(cells.slice(0, 3)).toEqual([id, "1", "E_QUALITY_DIRECTION"]);
    expect(cells[3]).toMatch(/^cosine -/);
    expect(await page.textContent("#history-quality")).toMatch(/excluded from round 2 to 3/);
    expect(problems).toEqual([]);
  } finally {
    await page.close();
    await d.close();
  }
});
