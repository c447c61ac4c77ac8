import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { ModuleClient, type Twin } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { createRegistry, createServiceClient, startLocalHub } from "../../../local/hub";
import { IotHubFleet, type RoundDesired } from "../../../cloud/aggregator/src/fleet/fleet";
import { createAggregator } from "../../../cloud/aggregator/src/aggregator";
import { MemoryBlobStore } from "../../../cloud/aggregator/src/store/blob-store";
import { ctx, jobBody, post } from "./support";
import {
  EVALUATE_ORDER_VERSION,
  parseEvaluateOrder,
  type EvaluateOrder,
} from "../../../core/protocol/round-order";

function reported(twin: Twin, patch: unknown): Promise<void> {
  const update = twin.properties.reported.update as (p: unknown, cb: (e?: Error) => void) => void;
  return new Promise((res, rej) => update(patch, (e) => (e ? rej(e) : res())));
}

async function waitFor(cond: () => boolean, ms: number, what: string) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("IotHubFleet against the local hub with the real azure-iothub and azure-iot-device SDKs", async () => {
  const hub = await startLocalHub({ log: () => {} });
  const clients: ModuleClient[] = [];
  const open = async (d: string, m: string) => {
    const c = ModuleClient.fromConnectionString(hub.createModule(d, m), Mqtt);
    await c.setOptions({ ca: hub.caCertPem });
    await c.open();
    clients.push(c);
    return c;
  };
  const registry = createRegistry(hub);
  const service = createServiceClient(hub);
  const logs: string[] = [];
  const fleet = new IotHubFleet(registry, service, { methodTimeoutSeconds: 5, log: (l) => logs.push(l) });
  try {
    // edge-1: trainer + update-queue + profiler online; edge-2: trainer identity only, offline
    const trainer = await open("edge-1", "trainer");
    const queue = await open("edge-1", "update-queue");
    const profiler = await open("edge-1", "profiler");
    hub.createModule("edge-2", "trainer");

    const started: unknown[] = [];
    trainer.onMethod("startRound", (req, res) => {
      if (!req || !res) return;
      started.push(req.payload);
      void res.send(200, { accepted: true });
    });
    trainer.onMethod("secaggShareKeys", (req, res) => {
      if (!req || !res) return;
      const p = req.payload as { jobId?: string };
      void (p.jobId === "job-x"
        ? res.send(200, { echo: p })
        : res.send(400, { code: "E_SECAGG_STATE", message: "no" }));
    });
    const acks: unknown[] = [];
    queue.onMethod("ack", (req, res) => {
      if (!req || !res) return;
      acks.push(req.payload);
      void res.send(200, {});
    });
    const tTwin = await trainer.getTwin();
    await reported(tTwin, { flotilla: { status: "idle", numSamples: 600 } });
    await reported(await profiler.getTwin(), { capabilities: { samplesPerSecond: { mlp: 250, cnn: 12 } } });
    const desiredSeen: unknown[] = [];
    tTwin.on("properties.desired", (d: Record<string, unknown>) => {
      if (d.flotilla !== undefined) desiredSeen.push(d.flotilla);
    });
    await waitFor(
      () => hub.subscriptions("edge-1", "trainer").some((s) => s.startsWith("$iothub/methods")),
      5000,
      "methods",
    );

    const trainers = await fleet.listTrainers();
    assert.deepEqual(trainers, [
      {
        deviceId: "edge-1",
        connected: true,
        numSamples: 600,
        status: "idle",
        samplesPerSecond: { mlp: 250, cnn: 12 },
        policy: { enabled: true },
      },
      {
        deviceId: "edge-2",
        connected: false,
        numSamples: undefined,
        status: undefined,
        samplesPerSecond: undefined,
        policy: { enabled: true },
      },
    ]);

    const desired: RoundDesired = {
      jobId: "job-x",
      round: 4,
      modelUrl: "http://127.0.0.1/devstoreaccount1/flotilla/jobs/job-x/models/3.f32?sig=abc",
      modelSha256: "a".repeat(64),
      layoutHash: "b".repeat(64),
      modelSpec: { kind: "mlp", inputShape: [4], numClasses: 3, hidden: [5] },
      config: { epochs: 2, batchSize: 16, lr: 0.05, seed: 99 },
      deadline: 1_800_000_000_000,
    };
    await fleet.configureRound("edge-1", desired);
    const twin = await registry.getModuleTwin("edge-1", "trainer");
    const got = (twin.responseBody.properties.desired as Record<string, unknown>).flotilla as Record<
      string,
      unknown
    >;
    assert.equal(got.jobId, "job-x");
    assert.equal(got.round, 4);
    assert.equal(got.modelUrl, desired.modelUrl);
    assert.deepEqual((got.config as Record<string, unknown>).epochs, 2);
    // the module itself sees it (desired-properties notification over MQTT)
    await waitFor(
      () => desiredSeen.some((d) => (d as { round?: number }).round === 4),
      5000,
      "trainer desired notification",
    );
    const fresh = await trainer.getTwin();
    assert.equal((fresh.properties.desired.flotilla as { jobId: string }).jobId, "job-x");

    assert.equal(await fleet.startRound("edge-1", desired), true);
    assert.equal((started[0] as { round: number }).round, 4);
    assert.equal((started[0] as { modelSha256: string }).modelSha256, desired.modelSha256);
    // offline: 404, non-fatal
    assert.equal(await fleet.startRound("edge-2", desired), false);
    assert.ok(
      logs.some((l) => l.includes("edge-2") && l.includes("404")),
      logs.join("\n"),
    );

    // Secure aggregation's methods: the device's answer whatever its status; an offline device is not reached.
    assert.deepEqual(await fleet.callTrainer("edge-1", "secaggShareKeys", { jobId: "job-x", round: 4 }, 5), {
      reached: true,
      status: 200,
      payload: { echo: { jobId: "job-x", round: 4 } },
    });
    assert.deepEqual(await fleet.callTrainer("edge-1", "secaggShareKeys", { jobId: "other" }, 5), {
      reached: true,
      status: 400,
      payload: { code: "E_SECAGG_STATE", message: "no" },
    });
    const offline = await fleet.callTrainer("edge-2", "secaggShareKeys", { jobId: "job-x" }, 5);
    assert.equal(offline.reached, false);
    assert.match(offline.reached ? "" : offline.reason, /404/);
    // A secure round's order carries `secagg`.
    await fleet.configureRound("edge-1", { ...desired, round: 5, secagg: { stepSeconds: 20, threshold: 3 } });
    const secTwin = await registry.getModuleTwin("edge-1", "trainer");
    const sec = (secTwin.responseBody.properties.desired as Record<string, unknown>).flotilla as Record<
      string,
      unknown
    >;
    // (nulls delete what an earlier round set: the twin keeps no null members)
    assert.deepEqual(sec.secagg, { stepSeconds: 20, threshold: 3 });
    await fleet.configureRound("edge-1", desired);
    const plainTwin = await registry.getModuleTwin("edge-1", "trainer");
    const plain = (plainTwin.responseBody.properties.desired as Record<string, unknown>).flotilla as Record<
      string,
      unknown
    >;
    assert.equal(plain.secagg ?? null, null, "a plain round clears it");

    assert.equal(await fleet.ack("edge-1", ["u1", "u2"]), true);
    assert.deepEqual(acks, [{ updateIds: ["u1", "u2"] }]);
    assert.equal(await fleet.ack("edge-2", ["u3"]), false);

    await fleet.setOpenRound("edge-1", "job-x", 4);
    const qTwin = await registry.getModuleTwin("edge-1", "update-queue");
    assert.deepEqual((qTwin.responseBody.properties.desired as Record<string, unknown>).openRounds, {
      "job-x": 4,
    });

    // The quantizer's job: its codec and the job's weight layout (docs/iothub-protocol.md); null removes the job.
    hub.createModule("edge-1", "quantizer");
    const layout = { layoutHash: "cd".repeat(32), segments: [784, 10] };
    await fleet.configureQuantizer("edge-1", "job-x", "int8:tensor", layout);
    await fleet.configureQuantizer("edge-1", "job-y", "int8");
    const quantTwin = async () =>
      (
        (await registry.getModuleTwin("edge-1", "quantizer")).responseBody.properties.desired as Record<
          string,
          unknown
        >
      ).flotilla;
    assert.deepEqual(await quantTwin(), {
      jobs: { "job-x": { compression: "int8:tensor", ...layout }, "job-y": { compression: "int8" } },
    });
    await fleet.configureQuantizer("edge-1", "job-x", null);
    assert.deepEqual(await quantTwin(), { jobs: { "job-y": { compression: "int8" } } });

    // The evaluate-only order (core/protocol/round-order.ts): its own desired property, the round order untouched;
    // a later order without the int8 pair clears it (twin patches merge), and what the twin holds parses back.
    const sha = "ef".repeat(32);
    const evalOrder: EvaluateOrder = {
      v: EVALUATE_ORDER_VERSION,
      jobId: "job-x",
      round: 4,
      onnx: { url: "https://h/m.onnx", sha256: sha, int8Url: "https://h/m.int8.onnx", int8Sha256: sha },
      modelSpec: desired.modelSpec,
    };
    await fleet.configureEvaluation("edge-1", evalOrder);
    await fleet.configureEvaluation("edge-1", {
      ...evalOrder,
      onnx: { url: "https://h/m.onnx", sha256: sha },
    });
    const evalTwin = (await registry.getModuleTwin("edge-1", "trainer")).responseBody.properties
      .desired as Record<string, unknown>;
    assert.deepEqual(parseEvaluateOrder(evalTwin.flotillaEvaluate), {
      ...evalOrder,
      onnx: { url: "https://h/m.onnx", sha256: sha },
    });
    assert.equal((evalTwin.flotilla as { jobId?: unknown }).jobId, desired.jobId, "the round order stays");
    await fleet.configureEvaluation("edge-1", null);
    const noEval = await registry.getModuleTwin("edge-1", "trainer");
    assert.equal(
      parseEvaluateOrder(
        (noEval.responseBody.properties.desired as Record<string, unknown>).flotillaEvaluate,
      ),
      undefined,
    );

    await fleet.configureRound("edge-1", null);
    const idle = await registry.getModuleTwin("edge-1", "trainer");
    assert.equal((idle.responseBody.properties.desired as Record<string, unknown>).flotilla ?? null, null);
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    await hub.close();
    if (fs.existsSync(hub.stateDir)) fs.rmSync(hub.stateDir, { recursive: true, force: true });
  }
});

test("stopping a job over the local hub: the trainer gets abortRound and its desired `flotilla` is cleared", async () => {
  const hub = await startLocalHub({ log: () => {} });
  const clients: ModuleClient[] = [];
  try {
    const trainer = ModuleClient.fromConnectionString(hub.createModule("edge-1", "trainer"), Mqtt);
    await trainer.setOptions({ ca: hub.caCertPem });
    await trainer.open();
    clients.push(trainer);
    const aborts: unknown[] = [];
    trainer.onMethod("startRound", (req, res) => void res?.send(200, { accepted: true }));
    trainer.onMethod("abortRound", (req, res) => {
      if (!req || !res) return;
      aborts.push(req.payload);
      void res.send(200, { aborted: true });
    });
    const tTwin = await trainer.getTwin();
    const desiredSeen: unknown[] = [];
    tTwin.on("properties.desired", (d: Record<string, unknown>) => {
      if (d.flotilla !== undefined) desiredSeen.push(d.flotilla);
    });
    await waitFor(
      () => hub.subscriptions("edge-1", "trainer").some((s) => s.startsWith("$iothub/methods")),
      5000,
      "methods",
    );
    const fleet = new IotHubFleet(createRegistry(hub), createServiceClient(hub), { methodTimeoutSeconds: 5 });
    const agg = createAggregator(
      { store: new MemoryBlobStore(), fleet, clock: () => Date.now(), log: () => {} },
      { tickAfterIngest: false },
    );
    const id = String(jobBody().jobId);
    assert.equal((await agg.http.createJob(post("/api/jobs", jobBody()), ctx())).status, 201);
    assert.equal(
      (await agg.http.startJob(post(`/api/jobs/${id}/start`, undefined, { id }), ctx())).status,
      200,
    );
    await agg.roundTimer({}, ctx());
    await waitFor(
      () => desiredSeen.some((d) => (d as { round?: number } | null)?.round === 1),
      5000,
      "round 1 in the trainer's twin",
    );
    assert.equal(
      (await agg.http.stopJob(post(`/api/jobs/${id}/stop`, undefined, { id }), ctx())).status,
      200,
    );
    assert.deepEqual(aborts, [{ jobId: id, round: 1 }]);
    const twin = await createRegistry(hub).getModuleTwin("edge-1", "trainer");
    assert.equal((twin.responseBody.properties.desired as Record<string, unknown>).flotilla ?? null, null);
    await waitFor(() => desiredSeen.at(-1) === null, 5000, "the idle twin reaching the trainer");
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    await hub.close();
    if (fs.existsSync(hub.stateDir)) fs.rmSync(hub.stateDir, { recursive: true, force: true });
  }
});

test("listTrainers pages through more trainers than one query page (100) and ends", async () => {
  const hub = await startLocalHub({ log: () => {} });
  try {
    const ids = Array.from({ length: 230 }, (_, i) => `edge-${String(i).padStart(3, "0")}`);
    for (const id of ids) hub.createModule(id, "trainer");
    const fleet = new IotHubFleet(createRegistry(hub), createServiceClient(hub));
    const listed = await fleet.listTrainers();
    assert.deepEqual(
      listed.map((t) => t.deviceId),
      ids,
      "every trainer once, in order",
    );
  } finally {
    await hub.close();
  }
});

test("listTrainers(cohort) asks IoT Hub for the device twins matching the cohort (paged), with tags and every capability", async () => {
  const hub = await startLocalHub({ log: () => {} });
  const clients: ModuleClient[] = [];
  try {
    const registry = createRegistry(hub);
    const ids = Array.from({ length: 240 }, (_, i) => `edge-${String(i).padStart(3, "0")}`);
    for (const id of ids) hub.createModule(id, "trainer");
    // lines: every third device is on line-3 (80 devices, more than one page of 100 with the line-4 ones)
    for (const [i, id] of ids.entries()) {
      const line = i % 3 === 0 ? "line-3" : i % 3 === 1 ? "line-4" : "line-5";
      await registry.updateTwin(id, { tags: { flotilla: { fleet: line, rack: i } } }, "*");
    }
    const profiler = ModuleClient.fromConnectionString(hub.createModule("edge-000", "profiler"), Mqtt);
    await profiler.setOptions({ ca: hub.caCertPem });
    await profiler.open();
    clients.push(profiler);
    const caps = {
      samplesPerSecond: { mlp: 250, bad: -1 },
      memoryBytes: 4e9,
      freeMemoryBytes: 1e9,
      freeDiskBytes: 2e10,
      rttMs: 42.5,
      uplinkBytesPerSecond: 300_000,
      uptimeSeconds: 1000,
      availability: 0.75,
      measuredAt: "2026-12-07T05:00:00.000Z",
    };
    await reported(await profiler.getTwin(), { capabilities: caps });
    const fleet = new IotHubFleet(registry, createServiceClient(hub));

    const line3 = await fleet.listTrainers("tags.flotilla.fleet = 'line-3'");
    assert.deepEqual(
      line3.map((t) => t.deviceId),
      ids.filter((_, i) => i % 3 === 0),
    );
    assert.deepEqual(line3[0], {
      deviceId: "edge-000",
      connected: false,
      numSamples: undefined,
      status: undefined,
      samplesPerSecond: { mlp: 250 },
      memoryBytes: 4e9,
      freeMemoryBytes: 1e9,
      freeDiskBytes: 2e10,
      rttMs: 42.5,
      uplinkBytesPerSecond: 300_000,
      availability: 0.75,
      measuredAt: "2026-12-07T05:00:00.000Z",
      tags: { flotilla: { fleet: "line-3", rack: 0 } },
      policy: { enabled: true },
    });
    const two = await fleet.listTrainers(
      "tags.flotilla.fleet IN ['line-3', 'line-4'] AND tags.flotilla.rack < 200",
    );
    assert.deepEqual(
      two.map((t) => t.deviceId),
      ids.filter((_, i) => i % 3 !== 2 && i < 200),
    );
    assert.equal((await fleet.listTrainers()).length, 240);
    assert.deepEqual(await fleet.listTrainers("tags.flotilla.fleet = 'nowhere'"), []);
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    await hub.close();
    if (fs.existsSync(hub.stateDir)) fs.rmSync(hub.stateDir, { recursive: true, force: true });
  }
});
