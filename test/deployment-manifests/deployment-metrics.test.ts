/**
 * The layered deployment's custom metrics (IoT Hub automatic device management, `metrics.queries`): twin queries
 * the portal's deployment blade counts. IoT Hub only evaluates them in a subscription; here they are parsed and run
 * by the local hub's query engine (local/hub/query.ts, the IoT Hub query language subset it serves on
 * POST /devices/query) through the unmodified azure-iothub Registry, over module twins reported by real modules
 * (trainers started with startTrainer) and by real ModuleClients reporting the modules' own typed states.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { withContext } from "../helpers/context";
import { createRegistry, startLocalHub, type LocalHub } from "../../local/hub";
import { parseQuery } from "../../local/hub/query";
import { renderManifest } from "../../scripts/render-manifest";
import { startTrainer, type TrainerState } from "../../modules/trainer/src/trainer";
import type { UpdateQueueStatus } from "../../modules/update-queue/src/main";
import { REPORTED_KEY as QUEUE_KEY } from "../../modules/update-queue/src/main";
import { REPORTED_KEY as TRAINER_KEY } from "../../modules/trainer/src/trainer";

const repoRoot = path.resolve(__dirname, "..", "..", "..");
const layeredFile = path.join(repoRoot, "deployment-manifests", "layered", "flotilla-trainers.template.json");

function queries(): Record<string, string> {
  const layered = renderManifest(
    fs.readFileSync(layeredFile, "utf8"),
    {
      CONTAINER_REGISTRY: "r.example.io",
      CONTAINER_REGISTRY_USERNAME: "u",
      CONTAINER_REGISTRY_PASSWORD: "p",
      FLOTILLA_FLEET: "pilot-7",
    },
    { platform: "amd64" },
  ) as { metrics?: { queries?: Record<string, string> } };
  assert.ok(layered.metrics?.queries, "the layered deployment declares metrics.queries");
  return layered.metrics.queries;
}

test("custom metrics: at most 5, named, each `SELECT deviceId FROM devices.modules WHERE …` on one Flotilla module", () => {
  const q = queries();
  const names = Object.keys(q);
  // IoT Hub: up to 5 custom metrics per configuration; names are what the deployment blade shows.
  assert.ok(names.length >= 3 && names.length <= 5, `${names.length} custom metrics`);
  assert.deepEqual(names.slice(0, 3), ["training", "queuedUpdates", "trainerErrors"]);
  for (const [name, sql] of Object.entries(q)) {
    assert.match(name, /^[A-Za-z][A-Za-z0-9]{0,63}$/, `metric name ${name}`);
    const parsed = parseQuery(sql);
    assert.equal(parsed.source, "devices.modules", name);
    assert.deepEqual(parsed.select, [{ kind: "path", path: ["deviceId"], alias: "deviceId" }], name);
    assert.ok(parsed.where, `${name} has a condition`);
    assert.match(sql, /\bmoduleId = '(trainer|update-queue)'/, `${name} names the module it counts`);
    // Reported paths are the keys the modules really report (trainer `flotilla`, update-queue `updateQueue`).
    for (const m of sql.matchAll(/properties\.reported\.([A-Za-z]+)\./g))
      assert.ok([TRAINER_KEY, QUEUE_KEY].includes(m[1]), `${name}: reported key ${m[1]}`);
  }
  assert.throws(() => parseQuery("SELECT deviceId FROM devices.modules WHERE moduleId = "), {
    code: "E_HUB_QUERY",
  });
});

async function until(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  // Bounded by the test's timeout, not by a wall-clock assertion.
  while (!(await cond())) await new Promise((r) => setTimeout(r, 50));
  void what;
}

test(
  "custom metrics counted over a local fleet's module twins (real trainers, real ModuleClients, the hub's query API)",
  withContext(async (t) => {
    const hub: LocalHub = await startLocalHub({ log: () => {} });
    const cleanup: (() => Promise<unknown>)[] = [() => hub.close()];
    t.after(async () => {
      for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
    });
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-metrics-q-"));
    cleanup.push(async () => fs.rmSync(dataDir, { recursive: true, force: true }));
    const registry = createRegistry({
      serviceConnectionString: hub.serviceConnectionString,
      caCertPem: hub.caCertPem,
    });
    const open = async (deviceId: string, moduleId: string): Promise<ModuleClient> => {
      const c = ModuleClient.fromConnectionString(hub.createModule(deviceId, moduleId), Mqtt);
      await c.setOptions({ ca: hub.caCertPem });
      await c.open();
      cleanup.push(() => c.close());
      return c;
    };
    const report = async (c: ModuleClient, patch: Record<string, unknown>): Promise<void> => {
      const twin = await c.getTwin();
      await new Promise<void>((resolve, reject) =>
        twin.properties.reported.update(patch, (e?: Error) => (e ? reject(e) : resolve())),
      );
    };
    const trainerState = (
      status: TrainerState["status"],
      extra: Partial<TrainerState> = {},
    ): TrainerState => ({
      status,
      jobId: status === "idle" ? null : "job-1",
      round: status === "idle" ? null : 3,
      numSamples: 0,
      metrics: null,
      progress: status === "training" ? 0.5 : null,
      updateId: null,
      error: null,
      updatedAt: new Date().toISOString(),
      ...extra,
    });
    const queueStatus = (depth: number, online = true): UpdateQueueStatus => ({
      depth,
      pending: depth,
      awaitingAck: 0,
      bytesPending: depth * 1000,
      stagedUpdates: 0,
      stagedBytes: 0,
      counters: {} as UpdateQueueStatus["counters"],
      online,
      invalidInputs: 0,
      unstored: 0,
      unstoredBytes: 0,
      lostInputs: 0,
      quarantined: null,
      lastError: null,
      deferred: 0,
      deferredBytes: 0,
      config: {
        maxChunkBytes: 255000,
        resendAfterMs: 600000,
        capacityBytes: 268435456,
        retentionHours: 0,
        meteredLink: false,
        meteredMaxUploadBytes: 0,
      },
    });

    // Real trainers: edge-1 idle; edge-2 refuses a bad order from its twin and reports status `error`.
    for (const id of ["edge-1", "edge-2"]) {
      const client = await open(id, "trainer");
      const trainer = await startTrainer({
        client: client as never,
        dataDir,
        inference: "off",
        log: () => {},
      });
      cleanup.push(() => trainer.stop());
    }
    await registry.updateModuleTwin(
      "edge-2",
      "trainer",
      { properties: { desired: { flotilla: { jobId: "job-1", round: "not a number" } } } },
      "*",
    );
    // Trainers reporting what the trainer module reports mid-round (edge-3 training, edge-4 sending, edge-5
    // downloading), and update-queues: edge-3 holding 2 updates, edge-4 holding 1 while offline, edge-1 empty.
    await report(await open("edge-3", "trainer"), { [TRAINER_KEY]: trainerState("training") });
    await report(await open("edge-4", "trainer"), { [TRAINER_KEY]: trainerState("uploading") });
    await report(await open("edge-5", "trainer"), { [TRAINER_KEY]: trainerState("downloading") });
    await report(await open("edge-6", "trainer"), { [TRAINER_KEY]: trainerState("done") });
    await report(await open("edge-1", "update-queue"), { [QUEUE_KEY]: queueStatus(0) });
    await report(await open("edge-3", "update-queue"), { [QUEUE_KEY]: queueStatus(2) });
    await report(await open("edge-4", "update-queue"), { [QUEUE_KEY]: queueStatus(1, false) });

    const run = async (sql: string): Promise<string[]> => {
      const q = registry.createQuery(sql, 100);
      const rows: string[] = [];
      while (q.hasMoreResults) {
        const page = (await q.next()).result as unknown as { deviceId: string }[];
        rows.push(...page.map((r) => r.deviceId));
      }
      return rows.sort();
    };
    const q = queries();
    await until(async () => (await run(q.trainerErrors)).length > 0, "edge-2 reports its error");
    assert.deepEqual(await run(q.trainerErrors), ["edge-2"]);
    assert.deepEqual(await run(q.training), ["edge-3", "edge-4", "edge-5"]);
    assert.deepEqual(await run(q.queuedUpdates), ["edge-3", "edge-4"]);
    if (q.queueOffline) assert.deepEqual(await run(q.queueOffline), ["edge-4"]);
    // The real idle trainer is in none of them.
    for (const sql of Object.values(q)) assert.ok(!(await run(sql)).includes("edge-1"), sql);
  }),
);
