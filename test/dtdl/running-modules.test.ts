import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { moduleContracts, type ModuleName } from "../../local/pnp/contracts";
import { startProfiler } from "../../modules/profiler/src/profiler";
import { startQuantizer } from "../../modules/quantizer/src/quantizer";
import { startTrainer } from "../../modules/trainer/src/trainer";
import { startUpdateQueue } from "../../modules/update-queue/src/main";
import { FakeModuleClient } from "../modules/update-queue/fake-client";

/**
 * The running modules against their declarations (model.ts METHODS and REPORTED_KEYS, which test/dtdl/models.test.ts
 * compares with the model files): each module is started on an in-memory client, and the direct methods it
 * registers are exactly its METHODS, and every top-level key it reports is a REPORTED_KEYS entry or a writable
 * property's acknowledgement.
 */

const contracts = moduleContracts();

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
}

test("each running module registers exactly its declared methods and reports only its declared keys", async () => {
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
