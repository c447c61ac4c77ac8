/**
 * Server-optimizer state across Function restarts (issue 12): FedAvgM's momentum and FedAdam's moments are
 * persisted with each published model (models/{r}.state), so a job whose Function restarts between rounds
 * produces exactly the models of a job that never restarted.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { JobRepository, paths } from "../../../cloud/aggregator/src/jobs/state";
import { chunkEvents, makeDelta, SPEC, startJob, world, type World } from "./support";

const layout = modelLayout(SPEC as unknown as ModelSpec);

const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;
const DEVICES = ["dev-a", "dev-b", "dev-c"];
const SAMPLES = [10, 30, 60];
const LOSSES = [2, 1, 0.5];

async function send(w: World, jobId: string, round: number, i: number): Promise<void> {
  const { events } = chunkEvents({
    type: "result",
    jobId,
    round,
    deviceId: DEVICES[i],
    layoutHash: layout.hash,
    numSamples: SAMPLES[i],
    metrics: { loss: LOSSES[i] * round, accuracy: 0.25 * (i + 1), trainMs: 10 },
    delta: makeDelta(layout.totalSize, 100 * round + i + 1),
  });
  const r = await w.agg.ingestUpdates(events, ctxStub);
  assert.equal(r.rejected, 0, w.logs.join("\n"));
}

/**
 * Runs a 4-round job; `restartAfter` lists the rounds after whose close the Function restarts, `tamper` runs on
 * the store just before such a restart.
 */
async function runJob(
  strategy: string,
  restartAfter: readonly number[],
  tamper?: (w: World, jobId: string, round: number) => Promise<void>,
) {
  const w = world(DEVICES);
  const id = await startJob(w, {
    strategy,
    rounds: 4,
    strategyOptions: { clientsPerRound: 3, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
  });
  await w.agg.roundTimer({}, ctxStub);
  const repo = new JobRepository(w.store);
  for (let r = 1; r <= 4; r++) {
    for (let i = 0; i < DEVICES.length; i++) await send(w, id, r, i);
    w.now.t += 1000;
    await w.agg.roundTimer({}, ctxStub);
    if (restartAfter.includes(r)) {
      await tamper?.(w, id, r);
      w.restart(); // a fresh Orchestrator over the same blob store
    }
  }
  const job = await repo.getJob(id);
  assert.equal(job?.status, "completed", w.logs.join("\n"));
  const models: Float32Array[] = [];
  for (let r = 0; r <= 4; r++) models.push((await repo.getModel(id, r))!.weights);
  return { models, rounds: job!.rounds, w, id };
}

for (const strategy of ["fedadam", "fedavgm", "fedyogi", "fedadagrad"]) {
  test(`${strategy}: a Function restarted between rounds publishes the same models as one that never restarted`, async () => {
    const straight = await runJob(strategy, []);
    const restarted = await runJob(strategy, [1, 2, 3]);
    for (let r = 1; r <= 4; r++) {
      assert.deepEqual(
        Buffer.from(restarted.models[r].buffer),
        Buffer.from(straight.models[r].buffer),
        `model ${r} is bitwise equal`,
      );
    }
    assert.ok(
      restarted.rounds.every((x) => x.optimizerStateReset === false),
      "no round reports a reset optimizer",
    );
  });
}

test("a model published without its optimizer state, or with a damaged one, restarts the optimizer: recorded and logged, the job goes on", async () => {
  const straight = await runJob("fedadam", []);
  const run = await runJob("fedadam", [1, 2], async (w, id, r) => {
    if (r === 1) {
      // as an older version published it: no state blob, no reference in the meta
      await w.store.delete(paths.modelState(id, 1));
      const meta = JSON.parse(Buffer.from((await w.store.get(paths.modelMeta(id, 1)))!.bytes).toString());
      delete meta.strategyState;
      await w.store.put(paths.modelMeta(id, 1), Buffer.from(JSON.stringify(meta)));
    } else {
      await w.store.put(paths.modelState(id, 2), new Uint8Array(16)); // damaged
    }
  });
  assert.deepEqual(
    run.rounds.map((x) => [x.round, x.status, x.optimizerStateReset]),
    [
      [1, "aggregated", false],
      [2, "aggregated", true],
      [3, "aggregated", true],
      [4, "aggregated", false],
    ],
  );
  assert.ok(run.w.logs.some((l) => /model job-1\/1: fedadam optimizer state was not published/.test(l)));
  assert.ok(run.w.logs.some((l) => /model job-1\/2: fedadam optimizer state missing or damaged/.test(l)));
  assert.notDeepEqual(run.models[2], straight.models[2], "the reset is real (and recorded)");
});

test("fedavg has no optimizer state (no blob); the round record's training loss and accuracy are the strategy's metrics", async () => {
  const run = await runJob("fedavg", [1]);
  assert.equal(await run.w.store.exists(paths.modelState(run.id, 1)), false);
  for (const rec of run.rounds) {
    assert.equal(rec.optimizerStateReset, false);
    // Σ n_k·loss_k / Σ n_k with n = 10, 30, 60 and loss = (2, 1, 0.5) × round
    assert.ok(Math.abs(rec.trainLoss! - 0.8 * rec.round) < 1e-12, `round ${rec.round}: ${rec.trainLoss}`);
    assert.ok(Math.abs(rec.trainAccuracy! - 0.625) < 1e-12);
  }
});
