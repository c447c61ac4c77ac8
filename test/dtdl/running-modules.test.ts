import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { modelPath, moduleContracts, type ModuleName } from "../../local/pnp/contracts";
import { objectFields } from "../../local/pnp/dtdl";
import { startProfiler } from "../../modules/profiler/src/profiler";
import { startQuantizer } from "../../modules/quantizer/src/quantizer";
import { startTrainer } from "../../modules/trainer/src/trainer";
import { startUpdateQueue } from "../../modules/update-queue/src/main";
import { FakeModuleClient } from "../modules/update-queue/fake-client";
import type { MethodHandler } from "../../modules/shared/host";
import { METHODS as TRAINER_METHODS, type TrainerMethod } from "../../modules/trainer/src/model";

/**
 * The running modules against their declarations (model.ts METHODS and REPORTED_KEYS, which test/dtdl/models.test.ts
 * compares with the model files): each module is started on an in-memory client, and the direct methods it
 * registers are exactly its METHODS, and every top-level key it reports is a REPORTED_KEYS entry or a writable
 * property's acknowledgement, with no field its model's schema lacks.
 */

const contracts = moduleContracts();
const ROOT = path.join(__dirname, "..", "..", "..", "dtdl");

async function check(
  name: ModuleName,
  start: (client: FakeModuleClient) => Promise<{ stop(): Promise<void> }>,
) {
  const client = new FakeModuleClient();
  const handle = await start(client);
  await handle.stop(); // the last report goes out
  const c = contracts[name];
  assert.deepEqual([...client.methods.keys()].sort(), [...c.methods].sort(), `${name}: registered methods`);
  const keys = new Set(client.twin.reportedPatches.flatMap((p) => Object.keys(p)));
  assert.ok(keys.size > 0, `${name} reported its state`);
  const allowed = new Set([...c.reportedKeys, ...Object.keys(c.specs)]);
  for (const k of keys)
    assert.ok(allowed.has(k), `${name}: reported key ${k} is neither a REPORTED_KEYS entry nor a property`);
  // The module's own state, field by field: nothing it reports is missing from the model's Object schema.
  const model = JSON.parse(fs.readFileSync(path.join(ROOT, modelPath(name)), "utf8")) as unknown;
  for (const patch of client.twin.reportedPatches)
    for (const key of c.reportedKeys) {
      const value = patch[key];
      if (value === null || typeof value !== "object" || Array.isArray(value)) continue;
      const fields = objectFields(model, key);
      assert.ok(fields, `${name}: reported ${key} is an object, its model Property is not`);
      const missing = Object.keys(value).filter((f) => !fields.includes(f));
      assert.deepEqual(missing, [], `${name}: fields of reported ${key} the model does not describe`);
    }
}

test("each running module registers exactly its declared methods and reports only its declared keys and fields", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-dtdl-"));
  try {
    await check("trainer", (client) =>
      startTrainer({ client, deviceId: "dev-1", inference: "off", log: () => {} }),
    );
    await check("update-queue", (client) =>
      startUpdateQueue({ client, dir: path.join(dir, "queue"), reportIntervalMs: 0, log: () => {} }),
    );
    await check("quantizer", (client) =>
      startQuantizer({ client, stateDir: path.join(dir, "quantizer"), reportIntervalMs: 0, log: () => {} }),
    );
    await check("profiler", (client) =>
      startProfiler({
        client: client as never,
        dataDir: dir,
        bench: async (o) => ({ model: String(o.model), batchSize: 32, params: 1, samplesPerSecond: 100 }),
        log: () => {},
      }),
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a method table typed with the model's names (as each module's is) refuses a name outside them, or one missing", () => {
  const handler: MethodHandler = () => ({ status: 200 });
  const table = Object.fromEntries(TRAINER_METHODS.map((m) => [m, handler])) as Record<
    TrainerMethod,
    MethodHandler
  >;
  // tsc checks these: an unused @ts-expect-error fails the build, so the typing cannot silently stop refusing.
  // @ts-expect-error a method that is not in the model's METHODS
  const extra = { ...table, reboot: handler } satisfies Record<TrainerMethod, MethodHandler>;
  // @ts-expect-error a table without one of the model's methods
  const missing = { startRound: handler } satisfies Record<TrainerMethod, MethodHandler>;
  assert.equal(Object.keys(extra).length, TRAINER_METHODS.length + 1);
  assert.deepEqual(Object.keys(missing), ["startRound"]);
});
