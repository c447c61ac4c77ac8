import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { FLEET_MODULES, parseAssignments } from "../../../local/cli/fleet-modules";
import { ackRows, ackState, deviceViews, formatDevices } from "../../../local/cli/fleet-ops";
import { rolloutConfiguration } from "../../../local/cli/fleet-rollout";
import { MODEL_ID as TRAINER_MODEL } from "../../../modules/trainer/src/model";

/** The pieces of `flotilla fleet` that need no hub: value checks, ack states, the rollout document, the list view. */

test("parseAssignments validates with the module's own specs: JSON values, ranges, unknown and Function-owned keys", () => {
  assert.deepEqual(parseAssignments("update-queue", ["maxChunkBytes=65536", "meteredLink=true"]), {
    maxChunkBytes: 65536,
    meteredLink: true,
  });
  assert.deepEqual(parseAssignments("trainer", ["trainingWindows=null"]), { trainingWindows: null });
  assert.deepEqual(
    parseAssignments("trainer", ['trainingWindows={"timeZone":"Europe/Berlin","windows":["22:00-06:00"]}']),
    { trainingWindows: { timeZone: "Europe/Berlin", windows: ["22:00-06:00"] } },
  );
  const bad: [string, string[], string, RegExp][] = [
    ["nope", ["a=1"], "E_FLEET_MODULE", /trainer, update-queue, quantizer, profiler/],
    ["trainer", [], "E_PROPERTY_INVALID", /at least one/],
    ["trainer", ["enabled"], "E_PROPERTY_INVALID", /<name>=<json value>/],
    ["trainer", ["=1"], "E_PROPERTY_INVALID", /<name>=<json value>/],
    ["trainer", ["enabled=yes"], "E_PROPERTY_INVALID", /not a JSON value/],
    ["trainer", ['enabled="false"'], "E_PROPERTY_INVALID", /true or false/],
    ["trainer", ["maxThreads=65"], "E_PROPERTY_INVALID", /out of range/],
    ["trainer", ["maxThreads=1.5"], "E_PROPERTY_INVALID", /integer/],
    ["trainer", ["enabled=true", "enabled=false"], "E_PROPERTY_INVALID", /more than once/],
    [
      "trainer",
      ['trainingWindows={"timeZone":"Mars/Olympus","windows":[]}'],
      "E_PROPERTY_INVALID",
      /trainer trainingWindows/,
    ],
    ["trainer", ["flotilla={}"], "E_PROPERTY_UNKNOWN", /aggregation Function/],
    ["trainer", ["colour=1"], "E_PROPERTY_UNKNOWN", /known: enabled, /],
    ["quantizer", ["maxPendingBytes=1"], "E_PROPERTY_INVALID", /out of range/],
  ];
  for (const [m, a, code, message] of bad)
    assert.throws(() => parseAssignments(m, a), { code, message }, `${m} ${a.join(" ")}`);
});

test("ackState: current, pending (202 or not answered yet), refused, stale (an old ack), unset", () => {
  const desired = (v: Record<string, unknown>, version: number, meta?: Record<string, number>) => ({
    ...v,
    $version: version,
    ...(meta
      ? {
          $metadata: Object.fromEntries(
            Object.entries(meta).map(([k, n]) => [k, { $lastUpdatedVersion: n }]),
          ),
        }
      : {}),
  });
  const ack = (value: unknown, ac: number, av: number) => ({ value, ac, av });
  assert.equal(ackState(desired({ a: 1 }, 4), { a: ack(1, 200, 4) }, "a"), "current");
  assert.equal(ackState(desired({ a: 1 }, 4), { a: ack(1, 202, 4) }, "a"), "pending");
  assert.equal(ackState(desired({ a: 1 }, 4), {}, "a"), "pending");
  assert.equal(ackState(desired({ a: 99 }, 4), { a: ack(1, 400, 4) }, "a"), "refused");
  assert.equal(ackState(desired({ a: 2 }, 5), { a: ack(1, 200, 4) }, "a"), "stale");
  assert.equal(ackState(desired({}, 5), {}, "a"), "unset");
  // A later write to another property (a round order) does not make an answered ack stale: $metadata says when
  // this property changed (IoT Hub, and the local hub), or the acked value equals the desired one.
  assert.equal(ackState(desired({ a: 99 }, 9, { a: 4 }), { a: ack(1, 400, 4) }, "a"), "refused");
  assert.equal(ackState(desired({ a: 1 }, 9), { a: ack(1, 200, 4) }, "a"), "current");
  assert.equal(ackState(desired({ a: 99 }, 9, { a: 6 }), { a: ack(1, 400, 4) }, "a"), "stale");
});

test("ackRows skips the Function's keys and $-keys; deviceViews shows policy, state, capabilities and model IDs", () => {
  const twins = [
    {
      deviceId: "d1",
      moduleId: "trainer",
      modelId: TRAINER_MODEL,
      connectionState: "Connected",
      lastActivityTime: "2026-01-02T03:04:05Z",
      properties: {
        desired: { $version: 3, flotilla: { round: 1 }, enabled: false },
        reported: {
          flotilla: { status: "idle", round: 2, jobId: "j" },
          enabled: { value: false, ac: 200, av: 3 },
          participation: { status: "disabled", reason: "enabled is false" },
        },
      },
    },
    {
      deviceId: "d1",
      moduleId: "profiler",
      properties: {
        desired: { $version: 1 },
        reported: {
          capabilities: { samplesPerSecond: { mlp: 1234.5 }, freeMemoryBytes: 2e9, freeDiskBytes: 5e8 },
        },
      },
    },
  ];
  const rows = ackRows(twins);
  assert.deepEqual(
    rows.map((r) => `${r.moduleId}.${r.property}:${r.state}`),
    ["trainer.enabled:current"],
  );
  const views = deviceViews([{ deviceId: "d1", connectionState: "Disconnected" }, { deviceId: "d0" }], twins);
  assert.deepEqual(
    views.map((v) => v.deviceId),
    ["d0", "d1"],
  );
  const d1 = views[1];
  assert.equal(d1.connectionState, "Connected");
  assert.equal(d1.lastActivityTime, "2026-01-02T03:04:05Z");
  assert.deepEqual(d1.trainer, { status: "idle", round: 2, jobId: "j" });
  assert.deepEqual(d1.policy.enabled, { value: false, state: "current" });
  assert.deepEqual(d1.modelIds, { trainer: TRAINER_MODEL });
  const text = formatDevices(views);
  assert.match(
    text,
    /d1\s+Connected\s+2026-01-02T03:04:05Z\s+idle r2\s+disabled \(enabled is false\)\s+mlp 1235\/s, mem 2\.0 GB, disk 500 MB\s+trainer=Trainer;1\s+enabled=false/,
  );
  assert.match(text, /d0\s+Disconnected\s+never\s+-\s+-\s+-\s+-\s+defaults/);
});

test("rolloutConfiguration: a module configuration on the module's twins, with Plug and Play ack metrics", () => {
  const c = rolloutConfiguration({
    name: "night-windows",
    module: "trainer",
    assignments: ['trainingWindows={"timeZone":"Europe/Berlin","windows":["22:00-06:00"]}', "maxThreads=2"],
    target: "FROM devices.modules WHERE tags.ring = 'canary'",
    priority: "20",
  });
  assert.deepEqual(c.content, {
    moduleContent: {
      "properties.desired.trainingWindows": { timeZone: "Europe/Berlin", windows: ["22:00-06:00"] },
      "properties.desired.maxThreads": 2,
    },
  });
  assert.equal(
    c.targetCondition,
    "FROM devices.modules WHERE moduleId = 'trainer' AND (tags.ring = 'canary')",
  );
  assert.equal(c.priority, 20);
  const q = (c.metrics as { queries: Record<string, string> }).queries;
  assert.equal(
    q.acked,
    "SELECT deviceId, moduleId FROM devices.modules WHERE configurations.[[night-windows]].status = 'Applied' AND " +
      "properties.reported.trainingWindows.ac = 200 AND properties.reported.maxThreads.ac = 200 AND properties.reported.maxThreads.value = 2",
  );
  assert.match(q.refused, /trainingWindows\.ac >= 400 OR properties\.reported\.maxThreads\.ac >= 400\)$/);
  assert.ok(Object.keys(FLEET_MODULES).includes("profiler"));
});

test("docs/operations.md names every writable property of every module, and the fleet commands", () => {
  const doc = fs.readFileSync(path.join(__dirname, "..", "..", "..", "..", "docs", "operations.md"), "utf8");
  const missing: string[] = [];
  for (const [m, def] of Object.entries(FLEET_MODULES)) {
    if (!doc.includes(`\`${m}\``)) missing.push(m);
    for (const name of Object.keys(def.specs)) if (!doc.includes(`\`${name}\``)) missing.push(`${m}.${name}`);
  }
  for (const c of ["list", "set", "acks", "rollout", "rollouts"])
    if (!doc.includes(`flotilla fleet ${c}`)) missing.push(`flotilla fleet ${c}`);
  assert.deepEqual(missing, []);
});

test("list's policy is what the cloud honours (effectivePolicy): a new valid value at once, a refused one never", () => {
  const trainer = (desired: Record<string, unknown>, reported: Record<string, unknown>) => ({
    deviceId: "d",
    moduleId: "trainer",
    properties: { desired: { $version: 5, ...desired }, reported },
  });
  const [pending] = deviceViews([{ deviceId: "d" }], [trainer({ maxThreads: 2 }, {})]);
  assert.deepEqual(pending.policy.maxThreads, { value: 2, state: "pending" });
  assert.match(formatDevices([pending]), /maxThreads=2 \(not acked yet\)$/);
  const [refused] = deviceViews(
    [{ deviceId: "d" }],
    [
      trainer(
        { maxThreads: 99 },
        { maxThreads: { value: 4, ac: 400, av: 5, ad: "E_PROPERTY_INVALID: ..." } },
      ),
    ],
  );
  assert.deepEqual(refused.policy.maxThreads, { value: 4, desired: 99, state: "refused" });
  assert.match(formatDevices([refused]), /maxThreads=4 \(refused 99\)$/);
});
