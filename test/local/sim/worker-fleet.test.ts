import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { DEFAULT_CONFIG, type SimConfig } from "../../../local/sim/config";
import { WorkerFleet } from "../../../local/sim/worker-fleet";
import { runJob } from "../../../core/round/server";
import { createStrategy } from "../../../core/strategies/registry";
import { createModel } from "../../../core/engine/models";
import { loadFleetData } from "../../../local/sim/data";
import { initBackend } from "../../../core/engine/backend";
import { serverTransportContract } from "../../core/protocol/transport-contract";

serverTransportContract("WorkerFleet (the simulator's devices in worker threads)", (config) =>
  WorkerFleet.start(config),
);

test("a worker that dies mid-round: its requests fail with E_SIM_WORKER at once, later rounds use the others", async () => {
  const config: SimConfig = {
    ...DEFAULT_CONFIG,
    devices: 8,
    clientsPerRound: 8,
    rounds: 2,
    samplesPerDevice: 40,
    workers: 2,
    // A broken failure path would show up as E_ROUND_TIMEOUT after this long instead of E_SIM_WORKER.
    roundTimeoutMs: 60_000,
  };
  await initBackend();
  const data = loadFleetData(config);
  const model = await createModel(data.spec, config.seed);
  const strategy = createStrategy("fedavg", {
    clientsPerRound: 8,
    fit: { epochs: 1, batchSize: 10, lr: 0.05 },
    seed: 1,
  });
  strategy.initialize(model.getWeights());
  const fleet = await WorkerFleet.start(config);
  const stderr = process.stderr.write.bind(process.stderr);
  const printed: string[] = [];
  process.stderr.write = ((chunk: string) => {
    printed.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  let killed = false;
  try {
    const records = await runJob(strategy, fleet, {
      jobId: "fault",
      rounds: 2,
      layout: model.layout,
      roundTimeoutInMs: config.roundTimeoutMs,
      events: {
        onDeviceDone: (round) => {
          if (round === 1 && !killed) {
            killed = true;
            void fleet.killWorker(0);
          }
        },
      },
    });
    const [r1, r2] = records;
    assert.equal(r1.completed.length + r1.failures.length, 8);
    assert.ok(r1.failures.length > 0, "worker 0 held some requests when it died");
    for (const f of r1.failures) assert.equal(f.code, "E_SIM_WORKER", `${f.deviceId}: ${f.code} ${f.reason}`);
    assert.equal(r2.completed.length, 8, "round 2 runs every device on the surviving worker");
    assert.ok(
      printed.some((l) => /E_SIM_WORKER: simulation worker 0 exited/.test(l)),
      "the loss is printed",
    );
  } finally {
    process.stderr.write = stderr;
    await fleet.close();
    model.dispose();
  }
});
