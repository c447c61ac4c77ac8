import { test } from "@jest/globals";
import assert from "node:assert/strict";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { PrivacyAccountant } from "../../../core/privacy/accountant";
import { api, roundState, startFaultFleet, startJob, waitJobDone } from "./fault-support";

/**
 * Differential privacy end to end on the local stack: a job with `differentialPrivacy` (distributed placement,
 * adaptive clipping) and `secureAggregation`. The real trainers follow the round order's `dp` (clip, add their noise
 * share, append the clip indicator to the masked vector, weigh 1); the Function unmasks the noisy sum, adapts the
 * clip norm, records ε, and stops the job when its budget would be exceeded. Not skipped when the update-queue
 * refuses `secagg` frames: such a regression must fail it.
 */

test("DP over IoT Hub: distributed noise with secure aggregation, ε recorded, the budget ends the job", async () => {
  const f = await startFaultFleet(4, 20, { identityKeys: "keyvault" });
  try {
    const spec: ModelSpec = { ...(f.data.spec as ModelSpec & { kind: "mlp" }), hidden: [8] };
    const jobId = "private";
    const z = 0.8;
    // q = 4/4: budget between the cost of 2 and 3 rounds, so 2 of the 4 rounds run.
    const acc = new PrivacyAccountant({
      mode: "sampled",
      noiseMultiplier: z,
      samplingRate: 1,
      delta: 1e-5,
    });
    const budget = (acc.epsilonAfter(2).epsilon + acc.epsilonAfter(3).epsilon) / 2;
    await api(f.stack.host.url, "POST", "jobs", {
      jobId,
      modelSpec: spec,
      strategy: "fedavg",
      strategyOptions: { clientsPerRound: 4, fit: { epochs: 1, batchSize: 10, lr: 0.05 }, seed: 7 },
      rounds: 4,
      roundDeadlineSeconds: 30,
      minCompletedFraction: 0.5,
      seed: 7,
      secureAggregation: { stepSeconds: 10, minSurvivors: 3 },
      differentialPrivacy: {
        noiseMultiplier: z,
        clip: "adaptive",
        initialClip: 0.5,
        clipCountStddev: 1,
        delta: 1e-5,
        epsilonBudget: budget,
        placement: "distributed",
      },
    });
    await startJob(f, jobId);
    const doc = await waitJobDone(f, jobId, 50_000);
    assert.equal(doc.status, "completed", doc.error);
    assert.equal(doc.stopReason, "budget-exhausted", JSON.stringify(doc.rounds.map((r) => r.dp)));
    assert.match(String(doc.stopMessage), /privacy budget/);
    assert.equal(doc.rounds.length, 2);
    for (const [i, rec] of doc.rounds.entries()) {
      assert.equal(rec.status, "aggregated", JSON.stringify(rec));
      assert.deepEqual(rec.secagg?.included, [...f.deviceIds].sort());
      assert.equal(rec.dp?.released, true);
      assert.equal(rec.dp?.placement, "distributed");
      assert.ok(Math.abs(rec.dp!.epsilon - acc.epsilonAfter(i + 1).epsilon) < 1e-9);
      assert.ok(typeof rec.dp?.unclippedFraction === "number" && typeof rec.dp?.nextClip === "number");
    }
    assert.equal(doc.rounds[0].dp?.clip, 0.5);
    assert.equal(doc.rounds[1].dp?.clip, doc.rounds[0].dp?.nextClip, "the adapted clip norm carried over");
    const st = await roundState(f.store, jobId, 1);
    assert.deepEqual(st?.received, {}, "no plaintext update reached the cloud");
    // Every trainer was told what to do (n' = 4 devices share the noise).
    assert.equal(st?.dp?.clip, 0.5);
    assert.ok((st?.dp?.order?.noiseStd ?? 0) > 0 && st?.dp?.order?.clipBitNoiseStd === 0.5);
    // The HTTP API reports the stop and the privacy spent.
    const body = (await api(f.stack.host.url, "GET", `jobs/${jobId}`)) as {
      stopReason?: string;
      privacy?: { epsilon: number; releasedRounds: number };
    };
    assert.equal(body.stopReason, "budget-exhausted");
    assert.equal(body.privacy?.releasedRounds, 2);
    assert.equal(body.privacy?.epsilon, doc.rounds[1].dp?.epsilon);
  } finally {
    await f.stack.close();
  }
}, 60_000);
