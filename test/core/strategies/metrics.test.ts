import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createStrategy } from "../../../core/strategies/registry";
import { DifferentialPrivacy } from "../../../core/privacy/dp";
import type { FitResult } from "../../../core/strategies/strategy";
import { strategyOptions as opts } from "../../helpers/strategy";

const fitResult = (deviceId: string, n: number, loss: number | null, accuracy: number | null): FitResult => ({
  deviceId,
  numSamples: n,
  delta: Float32Array.from([0.1, -0.1]),
  metrics: { loss: loss as number, accuracy: accuracy as number, trainMs: 1 },
});

test("finish() returns the next model and the round's metrics: updates, samples, sample-weighted loss and accuracy", () => {
  const s = createStrategy("fedadam", opts());
  s.initialize(Float32Array.from([1, 1]));
  const agg = s.beginAggregate(1);
  agg.add(fitResult("a", 10, 2, 0.5));
  agg.add(fitResult("b", 30, 1, 0.9));
  // a device under distributed or local DP withholds its loss (null): it weighs in the model, not in the loss
  agg.add(fitResult("c", 60, null, null));
  // a refused update counts nowhere
  assert.throws(() => agg.add({ ...fitResult("d", 1000, 100, 0), delta: new Float32Array(3) }));
  const { weights, metrics } = agg.finish([]);
  assert.equal(weights, s.weights);
  assert.deepEqual(metrics, {
    updates: 3,
    totalSamples: 100,
    trainLoss: (10 * 2 + 30 * 1) / 40,
    trainAccuracy: (10 * 0.5 + 30 * 0.9) / 40,
  });
});

test("a round with no update: the model is kept and the metrics say so (0 updates, NaN loss)", () => {
  const s = createStrategy("fedavg", opts());
  s.initialize(Float32Array.from([1, 2]));
  const { weights, metrics } = s.beginAggregate(1).finish([]);
  assert.deepEqual([...weights], [1, 2]);
  assert.equal(metrics.updates, 0);
  assert.equal(metrics.totalSamples, 0);
  assert.ok(Number.isNaN(metrics.trainLoss) && Number.isNaN(metrics.trainAccuracy));
});

test("a secure aggregate counts as its devices; its loss comes from the devices' reports", () => {
  const s = createStrategy("fedavg", opts());
  s.initialize(Float32Array.from([0, 0]));
  const agg = s.beginAggregate(1);
  agg.addAggregate({
    deviceIds: ["a", "b"],
    totalSamples: 4,
    mean: Float32Array.from([1, 1]),
    reports: [
      { numSamples: 1, loss: 4, accuracy: 0.2 },
      { numSamples: 3, loss: NaN },
    ],
  });
  agg.add(fitResult("c", 4, 2, 0.6));
  const { metrics } = agg.finish([]);
  assert.equal(metrics.updates, 3);
  assert.equal(metrics.totalSamples, 8);
  assert.equal(metrics.trainLoss, (1 * 4 + 4 * 2) / 5);
  assert.equal(metrics.trainAccuracy, (1 * 0.2 + 4 * 0.6) / 5);
});

test("under DP the updates weigh equally in the model, but the loss is weighted by the reported sample counts", () => {
  const dp = new DifferentialPrivacy({
    noiseMultiplier: 0.01, // the noise changes the model, not the metrics
    clip: 100,
    delta: 1e-5,
    placement: "central",
    clientsPerRound: 2,
    fleetSize: 2,
  });
  const s = createStrategy("fedavg", opts());
  s.initialize(Float32Array.from([0, 0]));
  const agg = dp.aggregate(s.beginAggregate(1), {
    round: 1,
    layoutHash: "x",
    length: 2,
    current: s.weights,
  });
  agg.add(fitResult("a", 1, 3, 0.1));
  agg.add(fitResult("b", 3, 1, 0.5));
  const { metrics } = agg.finish([]);
  assert.equal(metrics.updates, 2);
  assert.equal(metrics.totalSamples, 4);
  assert.equal(metrics.trainLoss, (1 * 3 + 3 * 1) / 4);
  assert.equal(metrics.trainAccuracy, (1 * 0.1 + 3 * 0.5) / 4);
});
