/**
 * The dashboard's sources and server without a browser: the Function's job API through the local Functions host
 * (with a function key, as `authLevel: "function"` asks in Azure), the fleet's twins through the local hub and the
 * unmodified azure-iothub Registry, and every kind of bad input as one coded line that the snapshot carries and
 * the server survives.
 */
import { afterAll, beforeAll, expect, test } from "@jest/globals";
import assert from "node:assert/strict";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { FlotillaError, isFlotillaError } from "../../../core/errors";
import { startFunctionsHost, type FunctionsHost } from "../../../local/stack/functions-host";
import { startLocalHub, type LocalHub } from "../../../local/hub";
import { functionApi, functionBaseUrl, twinSource } from "../../../local/dashboard/sources";
import { startDashboard, type Dashboard } from "../../../local/dashboard/server";
import { deviceRows, FleetHistory, roundPoints } from "../../../local/dashboard/model";
import { startJob, world, type World } from "../../cloud/aggregator/support";

const KEY = "test-function-key-0123456789";
let w: World;
let host: FunctionsHost;
let hub: LocalHub;
let closedPort: number;

beforeAll(async () => {
  w = world(["dev-a", "dev-b"]);
  host = await startFunctionsHost(w.agg, { functionKey: KEY, timerIntervalMs: 3_600_000 });
  hub = await startLocalHub({ log: () => undefined });
  // A port nothing listens on: bound, then released.
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  closedPort = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
});

afterAll(async () => {
  await host.close();
  await hub.close();
});

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    assert.ok(isFlotillaError(e), `a FlotillaError, got ${String(e)}`);
    assert.ok(!/\n/.test(e.message), `one line: ${e.message}`);
    return e.code;
  }
  throw new Error("expected a rejection");
}

test("Function URL: http(s) only, no query; a trailing /api is the same app", () => {
  expect(functionBaseUrl("https://app.azurewebsites.net/api/")).toBe("https://app.azurewebsites.net");
  expect(functionBaseUrl("http://127.0.0.1:7071")).toBe("http://127.0.0.1:7071");
  for (const bad of ["not a url", "ftp://app.example", "https://app.example/?code=secret"]) {
    assert.throws(
      () => functionBaseUrl(bad),
      (e: unknown) => e instanceof Error && (e as FlotillaError).code === "E_DASHBOARD_FUNCTION_URL",
    );
  }
});

test("the Function's job API with its key; a wrong or missing key, an unknown job, no server, not the Function", async () => {
  const jobId = await startJob(w);
  const api = functionApi({ url: host.url, key: KEY });
  const jobs = await api.listJobs();
  expect(jobs.map((j) => j.jobId)).toEqual([jobId]);
  await host.tick(); // the round timer opens round 1
  const detail = await api.getJob(jobId);
  expect(detail.status).toBe("running");
  expect(detail.currentRoundState?.participants.length).toBeGreaterThan(0);

  expect(await codeOf(functionApi({ url: host.url, key: "wrong" }).listJobs())).toBe(
    "E_DASHBOARD_FUNCTION_AUTH",
  );
  expect(await codeOf(functionApi({ url: host.url }).listJobs())).toBe("E_DASHBOARD_FUNCTION_AUTH");
  expect(await codeOf(api.getJob("no-such-job"))).toBe("E_JOB_NOT_FOUND");
  expect(await codeOf(functionApi({ url: `http://127.0.0.1:${closedPort}` }).listJobs())).toBe(
    "E_DASHBOARD_FUNCTION_UNREACHABLE",
  );
  // Another server (the hub's REST API answers 404 with its own body): not the Function.
  const code = await codeOf(functionApi({ url: `https://127.0.0.1:${hub.httpsPort}` }).listJobs());
  expect(["E_DASHBOARD_FUNCTION_UNREACHABLE", "E_DASHBOARD_FUNCTION_RESPONSE"]).toContain(code);
});

test("the fleet's module twins through the Registry; a bad connection string, a wrong key, an unreachable hub", async () => {
  hub.createModule("dev-a", "trainer");
  hub.createModule("dev-a", "update-queue");
  hub.createModule("dev-a", "profiler");
  hub.createModule("dev-b", "trainer");
  const twins = await twinSource({
    connectionString: hub.serviceConnectionString,
    caCertPem: hub.caCertPem,
  }).moduleTwins();
  expect(twins.map((t) => `${t.deviceId}/${t.moduleId}`).sort()).toEqual([
    "dev-a/profiler",
    "dev-a/trainer",
    "dev-a/update-queue",
    "dev-b/trainer",
  ]);
  const rows = deviceRows(twins);
  expect(rows.map((r) => [r.deviceId, r.connected, r.lastSeen])).toEqual([
    ["dev-a", false, null],
    ["dev-b", false, null],
  ]);

  const bad = (cs: string, extra = {}) =>
    codeOf(Promise.resolve().then(() => twinSource({ connectionString: cs, ...extra })));
  expect(await bad("not a connection string")).toBe("E_HUB_CONNECTION_STRING");
  expect(await bad("HostName=h.azure-devices.net;SharedAccessKeyName=iothubowner")).toBe(
    "E_HUB_CONNECTION_STRING",
  );
  expect(
    await bad("HostName=h.azure-devices.net;DeviceId=d;SharedAccessKeyName=x;SharedAccessKey=a2V5"),
  ).toBe("E_HUB_CONNECTION_STRING");
  // A local hub (GatewayHostName) needs its CA.
  expect(await bad(hub.serviceConnectionString)).toBe("E_HUB_CONNECTION_STRING");

  const wrongKey = hub.serviceConnectionString.replace(
    /SharedAccessKey=[^;]+/,
    `SharedAccessKey=${Buffer.alloc(32, 7).toString("base64")}`,
  );
  expect(
    await codeOf(twinSource({ connectionString: wrongKey, caCertPem: hub.caCertPem }).moduleTwins()),
  ).toBe("E_HUB_AUTH");
  const nowhere = hub.serviceConnectionString.replace(
    /GatewayHostName=[^;]+/,
    `GatewayHostName=localhost:${closedPort}`,
  );
  expect(
    await codeOf(twinSource({ connectionString: nowhere, caCertPem: hub.caCertPem }).moduleTwins()),
  ).toBe("E_DASHBOARD_HUB_UNREACHABLE");
});

test("round points: fleet-wide evaluation when a record has one, else the training metrics; ε from the DP record", () => {
  const points = roundPoints([
    {
      round: 2,
      status: "aggregated",
      participants: 4,
      completed: 3,
      failures: [{ deviceId: "d", code: "E_X" }],
      trainLoss: 0.5,
      trainAccuracy: 0.8,
      bytesReceived: 100,
      durationMs: 900,
      closedAt: 2,
      dp: { epsilon: 1.5 },
    },
    {
      round: 1,
      status: "aggregated",
      participants: 4,
      completed: 4,
      failures: [],
      trainLoss: 0.9,
      bytesReceived: 120,
      durationMs: 1000,
      closedAt: 1,
      evaluation: {
        round: 1,
        devices: 4,
        samples: 400,
        accuracy: 0.7,
        loss: 0.8,
        worstDecile: { value: 0.4, devices: ["d"] },
      },
    },
  ]);
  expect(points.map((p) => [p.round, p.source, p.accuracy, p.loss, p.bytes, p.epsilon, p.failures])).toEqual([
    [1, "evaluation", 0.7, 0.8, 120, null, 0],
    [2, "training", 0.8, 0.5, 100, 1.5, 1],
  ]);
  expect(points[0].evaluation?.worstDecile?.value).toBe(0.4);
});

test("device history: state changes once each, a round's metrics and whether its update arrived", () => {
  const h = new FleetHistory();
  const twin = (status: string, round: number, metrics: unknown) => [
    {
      deviceId: "d1",
      moduleId: "trainer",
      connectionState: "Connected",
      lastActivityTime: "2026-01-01T00:00:00Z",
      properties: { reported: { flotilla: { status, jobId: "j", round, numSamples: 50, metrics } } },
    },
    {
      deviceId: "d1",
      moduleId: "update-queue",
      connectionState: "Connected",
      properties: { reported: { updateQueue: { depth: 1, bytesPending: 10 } } },
    },
  ];
  h.observeDevices(deviceRows(twin("training", 1, null)), 1);
  h.observeDevices(deviceRows(twin("training", 1, null)), 2);
  h.observeDevices(deviceRows(twin("done", 1, { loss: 0.3, accuracy: 0.9, trainMs: 5 })), 3);
  h.observeJob({
    jobId: "j",
    status: "running",
    currentRound: 2,
    rounds: 3,
    history: [{ round: 1, failures: [] }],
    currentRoundState: { round: 1, status: "open", participants: ["d1"], received: ["d1"] },
  });
  const d = h.history("d1")!;
  expect(d.events.map((e) => [e.at, e.state])).toEqual([
    [1, "training"],
    [3, "done"],
  ]);
  expect(d.rounds).toEqual([
    {
      jobId: "j",
      round: 1,
      ordered: true,
      received: true,
      numSamples: 50,
      loss: 0.3,
      accuracy: 0.9,
      inferenceAccuracy: null,
      failure: null,
    },
  ]);
  expect(d.current?.queueDepth).toBe(1);
  expect(h.history("nobody")).toBeUndefined();
  // Ordered in round 2, which closed between two polls: received unless the record lists it as failed.
  for (const [id, failures] of [
    ["d1", []],
    ["d2", [{ deviceId: "d2", code: "E_ROUND_TIMEOUT" }]],
  ] as const) {
    h.observeJob({
      jobId: "j",
      status: "running",
      currentRound: 2,
      rounds: 3,
      history: [],
      currentRoundState: { round: 2, status: "open", participants: [id], received: [] },
    });
    h.observeJob({
      jobId: "j",
      status: "running",
      currentRound: 3,
      rounds: 3,
      history: [{ round: 2, status: "aggregated", failures }],
      currentRoundState: null,
    });
  }
  expect(h.history("d1")!.rounds.find((r) => r.round === 2)).toMatchObject({ received: true, failure: null });
  expect(h.history("d2")!.rounds.find((r) => r.round === 2)).toMatchObject({
    received: false,
    failure: "E_ROUND_TIMEOUT",
  });
});

test("the server: the page, Chart.js from node_modules, both sources' errors in the snapshot, loopback Host only", async () => {
  const lines: string[] = [];
  const d: Dashboard = await startDashboard({
    functionApi: functionApi({ url: host.url, key: "wrong" }),
    twins: twinSource({
      connectionString: hub.serviceConnectionString.replace(
        /GatewayHostName=[^;]+/,
        `GatewayHostName=localhost:${closedPort}`,
      ),
      caCertPem: hub.caCertPem,
    }),
    startErrors: [],
    port: 0,
    log: (l) => lines.push(l),
  });
  try {
    await d.refresh();
    const s = d.snapshot();
    expect(s.errors.map((e) => [e.source, e.code])).toEqual([
      ["function", "E_DASHBOARD_FUNCTION_AUTH"],
      ["hub", "E_DASHBOARD_HUB_UNREACHABLE"],
    ]);
    // Logged once each, however many polls fail the same way.
    await d.refresh();
    expect(lines.filter((l) => l.startsWith("E_DASHBOARD_FUNCTION_AUTH")).length).toBe(1);
    const get = async (p: string, headers: Record<string, string> = {}) => {
      const r = await fetch(new URL(p, d.url), { headers });
      return {
        status: r.status,
        type: r.headers.get("content-type") ?? "",
        csp: r.headers.get("content-security-policy") ?? "",
        text: await r.text(),
      };
    };
    const page = await get("/");
    expect(page.status).toBe(200);
    expect(page.text).toContain('<script src="chart.js"');
    expect(page.text).not.toMatch(/https?:\/\//); // nothing from a CDN
    expect(page.csp).toContain("script-src 'self'");
    const chart = await get("/chart.js");
    expect(chart.type).toContain("javascript");
    expect(chart.text).toContain("Chart.js v4");
    const snap = JSON.parse((await get("/api/snapshot")).text) as { errors: { code: string }[] };
    expect(snap.errors.map((e) => e.code)).toEqual([
      "E_DASHBOARD_FUNCTION_AUTH",
      "E_DASHBOARD_HUB_UNREACHABLE",
    ]);
    expect((await get("/api/devices/nobody")).status).toBe(404);
    expect((await get("/nothing")).status).toBe(404);
    const post = await fetch(new URL("/api/snapshot", d.url), { method: "POST" });
    expect(post.status).toBe(405);
    // DNS rebinding: another Host name is refused on a loopback bind.
    const evil = await new Promise<number>((resolve, reject) => {
      const u = new URL(d.url);
      http
        .get(
          { host: u.hostname, port: u.port, path: "/api/snapshot", headers: { host: "evil.example:80" } },
          (r) => {
            r.resume();
            resolve(r.statusCode ?? 0);
          },
        )
        .on("error", reject);
    });
    expect(evil).toBe(421);
  } finally {
    await d.close();
  }
});

test("a port in use is one E_DASHBOARD_LISTEN line", async () => {
  const d = await startDashboard({ port: 0 });
  try {
    const port = Number(new URL(d.url).port);
    expect(await codeOf(startDashboard({ port }))).toBe("E_DASHBOARD_LISTEN");
  } finally {
    await d.close();
  }
});
