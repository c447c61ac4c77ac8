import { test } from "@jest/globals";
import assert from "node:assert/strict";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { JobRepository } from "../../../cloud/aggregator/src/jobs/state";
import type { TrainOutcome } from "../../../modules/trainer/src/executor";
import {
  api,
  holdUplink,
  roundState,
  startFaultFleet,
  startJob,
  waitFor,
  waitJobDone,
} from "./fault-support";

/**
 * Secure aggregation end to end on the local stack: the aggregation Function's handlers, the embedded IoT Hub,
 * Azurite, the Key Vault stand-in holding every device's identity key, and the real trainer, quantizer and
 * update-queue modules. One device's trainer stops (a polite, in-process stop: faults.test.ts has the SIGKILLed
 * devices) right after advertising its keys; the round completes with the others, and the published model is FedAvg
 * of exactly their updates. Not skipped when the update-queue refuses `secagg` frames: such a regression must fail
 * it.
 */
test("a secure round over IoT Hub: a device stopped after advertising (polite stop) drops out, the model is FedAvg of the rest", async () => {
  const f = await startFaultFleet(6, 30, { identityKeys: "keyvault" });
  try {
    const spec: ModelSpec = { ...(f.data.spec as ModelSpec & { kind: "mlp" }), hidden: [16] };
    const jobId = "secure";
    // Every update the fleet trains, captured as the trainers get it from the shared training pool.
    const trained = new Map<string, TrainOutcome & { round: number }>();
    const run = f.stack.pool.run.bind(f.stack.pool);
    f.stack.pool.run = async (job, signal, progress) => {
      const out = await run(job, signal, progress);
      if (job.jobId === jobId)
        trained.set(job.deviceId, { ...out, delta: out.delta.slice(), round: job.round });
      return out;
    };
    const victim = f.deviceIds[3];
    const dead = f.device(victim);
    // The victim's advertisement waits in its outbox until its trainer is dead, so it surely advertised first.
    holdUplink(dead);
    await api(f.stack.host.url, "POST", "jobs", {
      jobId,
      modelSpec: spec,
      strategy: "fedavg",
      strategyOptions: { clientsPerRound: 6, fit: { epochs: 1, batchSize: 10, lr: 0.05 }, seed: 7 },
      rounds: 1,
      roundDeadlineSeconds: 40,
      minCompletedFraction: 0.5,
      seed: 7,
      secureAggregation: { stepSeconds: 5, minSurvivors: 3 },
    });
    await startJob(f, jobId);
    await waitFor(
      `${victim} to advertise`,
      () => dead.trainer.state().status === "secagg" && dead.queue.status().depth === 1,
      40_000,
      25,
      f.logs,
    );
    await dead.trainer.stop(); // closes its module client: the hub can no longer reach it
    assert.equal(f.stack.hub.isOnline(victim, "trainer"), false);
    f.stack.hub.disconnect(victim, "update-queue"); // the queue reconnects and sends the advertisement

    const doc = await waitJobDone(f, jobId, 60_000);
    assert.equal(doc.status, "completed", doc.error);
    const rec = doc.rounds[0];
    assert.equal(rec.status, "aggregated", JSON.stringify(rec));
    const survivors = f.deviceIds.filter((d) => d !== victim).sort();
    assert.deepEqual(rec.secagg?.included, survivors);
    assert.deepEqual(rec.secagg?.dropouts, { advertise: [], share: [victim], mask: [], unmask: [] });
    assert.equal(rec.completed, 5);
    assert.deepEqual(
      rec.failures.map((x) => x.deviceId),
      [victim],
    );
    assert.ok(rec.secagg?.params && rec.secagg.params.threshold >= 3);
    // Each survivor's masked input is one u32 per model value; requests and answers stayed small.
    const params = (await new JobRepository(f.store).getModel(jobId, 0))!.weights.length;
    for (const d of survivors) {
      const b = rec.secagg!.bytes[d];
      assert.ok(b.up > params * 4 && b.up < params * 4 + 64 * 1024, `${d} sent ${b.up} bytes`);
      assert.ok(b.down > 0 && b.down < 64 * 1024, `${d} got ${b.down} bytes`);
    }
    const st = await roundState(f.store, jobId, 1);
    assert.equal(st?.secagg?.phase, "finish");
    assert.deepEqual(st?.received, {}, "no plaintext update ever reached the cloud");

    // The global model is FedAvg of the survivors' updates, up to the fixed-point encoding.
    const repo = new JobRepository(f.store);
    const w0 = (await repo.getModel(jobId, 0))!.weights;
    const w1 = (await repo.getModel(jobId, 1))!.weights;
    const ups = survivors.map((d) => trained.get(d)!);
    assert.ok(ups.every((u) => u && u.round === 1));
    const total = ups.reduce((s, u) => s + u.numSamples, 0);
    let worst = 0;
    for (let i = 0; i < w0.length; i++) {
      let want = w0[i];
      for (const u of ups) want += (u.numSamples * u.delta[i]) / total;
      worst = Math.max(worst, Math.abs(w1[i] - want));
    }
    assert.ok(worst < 1e-5, `max |diff| from FedAvg of the survivors: ${worst}`);
    // The victim trained too: leaving it out matters.
    assert.ok(trained.has(victim));
  } finally {
    await f.stack.close();
  }
}, 90_000);
