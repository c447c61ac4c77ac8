/**
 * Screenshots of the live fleet dashboard for docs/dashboard.md: runs `npm start`'s job (the default preset: 20
 * devices on the local IoT Hub stack, 10 per round, 10 rounds) with the dashboard, opens it in headless Chromium
 * (Debian's `chromium`, driven by playwright-core) and, while the job runs, saves
 *
 *   docs/images/dashboard.png          the page once round 6 has closed and the next one is under way
 *   docs/images/dashboard-device.png   the same page with one device's history open
 *
 *   node dist/scripts/dashboard-screenshot.js [--out-dir docs/images] [--capture-round 6]
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { chromium } from "playwright-core";
import { errorCode, errorMessage } from "../core/errors";
import { DEFAULT_CONFIG, PRESETS, positiveInt, validateConfig } from "../local/sim/config";
import { simulateOverIotHub } from "../local/stack/iothub-simulate";
import type { Dashboard } from "../local/dashboard/server";
import { chromiumPath } from "../local/dashboard/chromium";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

async function main(): Promise<void> {
  const outDir = path.resolve(arg("--out-dir", path.join("docs", "images")));
  const executablePath = chromiumPath();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-dashboard-shot-"));
  const config = validateConfig({ ...DEFAULT_CONFIG, ...PRESETS.default, out: work });
  const captureRound = positiveInt("capture-round", arg("--capture-round", "6"), config.rounds - 1);
  fs.mkdirSync(outDir, { recursive: true });

  let dashboardReady!: (d: Dashboard) => void;
  const dashboard = new Promise<Dashboard>((r) => (dashboardReady = r));
  let roundClosed!: () => void;
  const captureTime = new Promise<void>((r) => (roundClosed = r));
  const run = simulateOverIotHub(
    config,
    {
      onRoundEnd: (s) => {
        console.error(`round ${s.round} closed`);
        if (s.round >= captureRound) roundClosed();
      },
    },
    { dashboard: { port: 0, log: (l) => console.error(`dashboard: ${l}`), onStart: dashboardReady } },
  );
  // A failed run must not leave the capture waiting.
  run.catch(() => roundClosed());
  const browser = await chromium.launch({ executablePath, headless: true });
  let d: Dashboard | undefined;
  try {
    d = await Promise.race([dashboard, run.then(() => undefined)]);
    if (!d) throw new Error("the job ended before the dashboard started");
    const page = await browser.newPage({ viewport: { width: 1360, height: 900 }, deviceScaleFactor: 1 });
    await page.goto(d.url);
    await page.waitForSelector(`#devices tr[data-device]`);
    await captureTime;
    await page.waitForSelector(`#rounds tr[data-round="${captureRound}"]`, { timeout: 30_000 });
    // The next round under way: some device downloading or training (or give up after 10 s and take what is there).
    await page
      .waitForSelector(`#devices tr[data-state="training"], #devices tr[data-state="downloading"]`, {
        timeout: 10_000,
      })
      .catch(() => undefined);
    const main = path.join(outDir, "dashboard.png");
    await page.screenshot({ path: main });
    const row = page.locator("#devices tr[data-device]").nth(3);
    const deviceId = await row.getAttribute("data-device");
    await row.click();
    await page.waitForSelector(`#history[data-device="${deviceId}"] #history-rounds tr[data-round]`);
    const device = path.join(outDir, "dashboard-device.png");
    await page.screenshot({ path: device });
    for (const f of [main, device])
      console.log(`${path.relative(process.cwd(), f)}: ${fs.statSync(f).size} bytes`);
    const result = await run;
    console.log(
      `job done: ${result.final.rounds} rounds, final test accuracy ${(result.final.accuracy * 100).toFixed(2)}%`,
    );
  } finally {
    await browser.close();
    await run.catch(() => undefined);
    await d?.close();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`dashboard-screenshot: ${errorCode(e)}: ${errorMessage(e)}`);
  process.exit(1);
});
