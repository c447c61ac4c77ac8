import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { clipL2, GaussianNoise, l2Norm } from "../../../core/privacy/mechanism";
import { PrivacyAccountant } from "../../../core/privacy/accountant";
import { computeRdp, DEFAULT_ORDERS, epsilonFromRdp } from "../../../core/privacy/rdp";
import { DifferentialPrivacy, privatizeUpdate, type DpOptions } from "../../../core/privacy/dp";
import type { RoundAggregation, SecureAggregate } from "../../../core/strategies/strategy";

function stats(v: ArrayLike<number>): { mean: number; std: number } {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i];
  const mean = s / v.length;
  let q = 0;
  for (let i = 0; i < v.length; i++) q += (v[i] - mean) ** 2;
  return { mean, std: Math.sqrt(q / (v.length - 1)) };
}

/** A strategy aggregation that records the one aggregate the DP wrapper hands it. */
function capture(): RoundAggregation & { got: SecureAggregate[] } {
  const got: SecureAggregate[] = [];
  return {
    got,
    add: () => assert.fail("the DP wrapper must hand the strategy one aggregate, not single updates"),
    addAggregate: (a) => got.push(a),
    count: 0,
    finish: () => ({
      weights: got[0]!.mean,
      metrics: { updates: 0, totalSamples: 0, trainLoss: NaN, trainAccuracy: NaN },
    }),
  };
}

const opts = (o: Partial<DpOptions>): DpOptions => ({
  noiseMultiplier: 1,
  clip: 1,
  delta: 1e-5,
  placement: "central",
  clientsPerRound: 10,
  fleetSize: 100,
  ...o,
});

test("clipping scales an update down to the clip norm and leaves smaller ones alone", () => {
  const v = Float32Array.from([3, 4]);
  const r = clipL2(v, 1);
  assert.equal(r.norm, 5);
  assert.equal(r.clipped, true);
  assert.ok(Math.abs(l2Norm(v) - 1) < 1e-6);
  assert.ok(Math.abs(v[0] / v[1] - 0.75) < 1e-6, "direction kept");
  const w = Float32Array.from([0.3, 0.4]);
  assert.equal(clipL2(w, 1).clipped, false);
  assert.deepEqual([...w], [...Float32Array.from([0.3, 0.4])]);
  assert.throws(() => clipL2(Float32Array.from([NaN]), 1), { code: "E_DP_INPUT" });
  assert.throws(() => clipL2(w, 0), { code: "E_DP_CONFIG" });
});

test("Gaussian noise has the standard deviation asked for (CSPRNG and seeded)", () => {
  for (const noise of [new GaussianNoise(), new GaussianNoise(7)]) {
    const v = new Float64Array(200_000);
    noise.addTo(v, 0.3);
    const s = stats(v);
    // Standard error of the std: σ/√(2n) ≈ 0.00047; 1% is about 6 standard errors.
    assert.ok(Math.abs(s.std - 0.3) / 0.3 < 0.01, `std ${s.std}`);
    assert.ok(Math.abs(s.mean) < 0.005, `mean ${s.mean}`);
  }
  // Two unseeded generators never repeat each other.
  const a = new Float64Array(8);
  const b = new Float64Array(8);
  new GaussianNoise().addTo(a, 1);
  new GaussianNoise().addTo(b, 1);
  assert.notDeepEqual([...a], [...b]);
});

test("central DP: the server clips each update and adds N(0, (zC)²) to the sum", () => {
  const d = 100_000;
  const n = 10;
  const dp = new DifferentialPrivacy(opts({ noiseMultiplier: 1.5, clip: 2, noiseSeed: 3 }));
  const inner = capture();
  const agg = dp.aggregate(inner, { round: 1, layoutHash: "x", length: d, current: new Float32Array(d) });
  // Each update: a large constant vector (norm 100·√d ≫ C), clipped to norm 2 by the server.
  for (let k = 0; k < n; k++) {
    agg.add({
      deviceId: `d${k}`,
      numSamples: 1 + k * 100, // ignored under DP: equal weights
      delta: new Float32Array(d).fill(100),
      metrics: { loss: 0, accuracy: 0, trainMs: 0 },
    });
  }
  const mean = agg.finish([]).weights;
  assert.equal(inner.got.length, 1);
  assert.equal(inner.got[0].totalSamples, n);
  // Clipped value per coordinate: 2/√d; the mean's noise std is zC/n = 0.3.
  const clipped = 2 / Math.sqrt(d);
  const s = stats(mean);
  assert.ok(Math.abs(s.mean - clipped) < 0.005, `mean ${s.mean} vs ${clipped}`);
  assert.ok(Math.abs(s.std - 0.3) / 0.3 < 0.02, `noise std of the mean ${s.std}, expected 0.3`);
  assert.equal(dp.lastRound?.released, true);
  assert.equal(dp.lastRound?.noiseStd, 3);
  assert.ok((dp.lastRound?.epsilon ?? 0) > 0);
});

test("central DP with staleness weights: clipped updates scaled by s(τ) ≤ 1, the mean still divides by the count", () => {
  const d = 4;
  const dp = new DifferentialPrivacy(opts({ noiseMultiplier: 1e-6, clip: 1, noiseSeed: 1 }));
  const inner = capture();
  const agg = dp.aggregate(inner, { round: 1, layoutHash: "x", length: d, current: new Float32Array(d) });
  const m = { loss: 0, accuracy: 0, trainMs: 0 };
  // norm 2 → clipped to norm 1 (0.5 per coordinate), then weighted 1 and 0.5: (0.5 + 0.25) / 2
  agg.add({ deviceId: "a", numSamples: 5, delta: new Float32Array(d).fill(1), metrics: m, discount: 1 });
  agg.add({ deviceId: "b", numSamples: 5, delta: new Float32Array(d).fill(1), metrics: m, discount: 0.5 });
  const mean = agg.finish([]).weights;
  for (const v of mean) assert.ok(Math.abs(v - 0.375) < 1e-4, `${v}`);
  assert.equal(inner.got[0]!.totalSamples, 2);
  assert.equal(dp.accountant.countedSteps, 1);
});

test("distributed DP: n devices each adding (zC)²/n give the central noise on the sum", () => {
  const d = 50_000;
  const n = 20;
  const z = 1.2;
  const C = 0.5;
  const dist = new DifferentialPrivacy(
    opts({ placement: "distributed", noiseMultiplier: z, clip: C, clientsPerRound: n }),
  );
  const order = dist.deviceOrder(true)!;
  assert.equal(dist.minSurvivors, 16, "default n' = ⌈0.8·n⌉");
  const exact = new DifferentialPrivacy(
    opts({ placement: "distributed", noiseMultiplier: z, clip: C, clientsPerRound: n, minSurvivors: n }),
  );
  const o = exact.deviceOrder(true)!;
  assert.ok(Math.abs(o.noiseStd - (z * C) / Math.sqrt(n)) < 1e-12);
  assert.ok(order.noiseStd > o.noiseStd, "calibrated for fewer survivors: each device adds more");
  // Sum of n devices' noised zero updates: the noise on the sum must have std zC, as the central placement's.
  const sum = new Float64Array(d);
  const noise = new GaussianNoise(11);
  for (let k = 0; k < n; k++) {
    const u = new Float32Array(d);
    privatizeUpdate(u, o, noise);
    for (let i = 0; i < d; i++) sum[i] += u[i];
  }
  const central = new Float64Array(d);
  new GaussianNoise(12).addTo(central, z * C);
  const sd = stats(sum).std;
  const sc = stats(central).std;
  assert.ok(Math.abs(sd - z * C) / (z * C) < 0.02, `distributed sum std ${sd}`);
  assert.ok(Math.abs(sd - sc) / sc < 0.03, `distributed ${sd} vs central ${sc}`);
  // The round record reports the same total for both placements when nobody drops out.
  const central2 = new DifferentialPrivacy(
    opts({ noiseMultiplier: z, clip: C, clientsPerRound: n, noiseSeed: 1 }),
  );
  const run = (dp: DifferentialPrivacy, secure: boolean) => {
    const agg = dp.aggregate(capture(), {
      round: 1,
      layoutHash: "x",
      length: 4,
      current: new Float32Array(4),
    });
    if (secure)
      agg.addAggregate({
        deviceIds: Array.from({ length: n }, (_, k) => `d${k}`),
        totalSamples: n,
        mean: new Float32Array(4),
      });
    else
      for (let k = 0; k < n; k++)
        agg.add({
          deviceId: `d${k}`,
          numSamples: 1,
          delta: new Float32Array(4),
          metrics: { loss: 0, accuracy: 0, trainMs: 0 },
        });
    agg.finish([]);
    return dp.lastRound!;
  };
  assert.ok(Math.abs(run(exact, true).noiseStd - run(central2, false).noiseStd) < 1e-12);
});

test("distributed DP: a round with fewer than n' updates releases nothing and costs no privacy", () => {
  const dp = new DifferentialPrivacy(
    opts({ placement: "distributed", clientsPerRound: 10, minSurvivors: 8 }),
  );
  const current = Float32Array.from([1, 2, 3]);
  const agg = dp.aggregate(capture(), { round: 1, layoutHash: "x", length: 3, current });
  agg.addAggregate({ deviceIds: ["a", "b", "c"], totalSamples: 3, mean: new Float32Array(3) });
  assert.equal(agg.finish([]).weights, current, "the model is kept");
  assert.equal(dp.lastRound?.released, false);
  assert.match(dp.lastRound?.reason ?? "", /fewer than the 8/);
  assert.equal(dp.spent().steps, 0);
  assert.equal(dp.spent().epsilon, 0);
});

test("local DP: each device adds the full noise; the ledger counts each device's rounds at q = 1, z/2", () => {
  const dp = new DifferentialPrivacy(opts({ placement: "local", noiseMultiplier: 4, clip: 1 }));
  assert.equal(dp.deviceOrder(false)?.noiseStd, 4);
  for (const ids of [["a", "b"], ["a", "c"], ["a"]]) {
    const agg = dp.aggregate(capture(), {
      round: 1,
      layoutHash: "x",
      length: 2,
      current: new Float32Array(2),
    });
    for (const id of ids)
      agg.add({
        deviceId: id,
        numSamples: 5,
        delta: new Float32Array(2),
        metrics: { loss: 0, accuracy: 0, trainMs: 0 },
      });
    agg.finish([]);
  }
  const spent = dp.spent();
  assert.equal(spent.steps, 3, "device a took part three times");
  const expected = epsilonFromRdp(DEFAULT_ORDERS, computeRdp(1, 2, 3), 1e-5);
  assert.ok(Math.abs(spent.epsilon - expected.epsilon) < 1e-12);
  assert.throws(() => new DifferentialPrivacy(opts({ placement: "local", clip: "adaptive" })), {
    code: "E_DP_CONFIG",
  });
});

test("adaptive clipping: the clip norm grows when updates are clipped and shrinks when they are not", () => {
  const mk = () =>
    new DifferentialPrivacy(
      opts({
        clip: "adaptive",
        initialClip: 1,
        clientsPerRound: 100,
        fleetSize: 1000,
        clipCountStddev: 1,
        noiseSeed: 5,
      }),
    );
  // z_Δ = (z⁻² − (2σ_b)⁻²)^(−½) = (1 − 1/4)^(−½)
  assert.ok(Math.abs(mk().updateNoiseMultiplier - 1 / Math.sqrt(0.75)) < 1e-12);
  for (const [norm, grows] of [
    [10, true],
    [0.01, false],
  ] as const) {
    const dp = mk();
    const agg = dp.aggregate(capture(), {
      round: 1,
      layoutHash: "x",
      length: 1,
      current: new Float32Array(1),
    });
    for (let k = 0; k < 100; k++)
      agg.add({
        deviceId: `d${k}`,
        numSamples: 1,
        delta: Float32Array.from([norm]),
        metrics: { loss: 0, accuracy: 0, trainMs: 0 },
      });
    agg.finish([]);
    const r = dp.lastRound!;
    // All clipped: b̄ ≈ 0 → C·e^{0.2·0.5}; none clipped: b̄ ≈ 1 → C·e^{−0.1}. The count's noise is 1/100.
    const factor = r.nextClip! / r.clip;
    if (grows) assert.ok(factor > 1.08 && factor < 1.13, `factor ${factor}`);
    else assert.ok(factor > 0.88 && factor < 0.93, `factor ${factor}`);
    assert.equal(dp.clip, r.nextClip);
  }
  assert.throws(
    () => new DifferentialPrivacy(opts({ clip: "adaptive", noiseMultiplier: 2, clientsPerRound: 10 })),
    {
      code: "E_DP_CONFIG",
    },
  );
});

test("the budget stops before the round that would exceed it; the ledger survives export/import", () => {
  const o = opts({ noiseMultiplier: 1, epsilonBudget: 3 });
  const acc = new PrivacyAccountant({ mode: "sampled", noiseMultiplier: 1, samplingRate: 0.1, delta: 1e-5 });
  let allowed = 0;
  while (acc.epsilonAfter(allowed + 1).epsilon <= 3) allowed++;
  assert.ok(allowed > 0);
  const dp = new DifferentialPrivacy(o);
  let rounds = 0;
  while (dp.allowsNextRound()) {
    const agg = dp.aggregate(capture(), {
      round: rounds + 1,
      layoutHash: "x",
      length: 1,
      current: new Float32Array(1),
    });
    agg.add({
      deviceId: "a",
      numSamples: 1,
      delta: new Float32Array(1),
      metrics: { loss: 0, accuracy: 0, trainMs: 0 },
    });
    agg.finish([]);
    rounds++;
    assert.ok(dp.spent().epsilon <= 3);
  }
  assert.equal(rounds, allowed);
  assert.equal(dp.status.state, "budget-exhausted");
  assert.match(dp.status.reason ?? "", /budget ε=3 .* reached/);
  const copy = new DifferentialPrivacy(o);
  copy.importState(JSON.parse(JSON.stringify(dp.exportState())));
  assert.equal(copy.spent().epsilon, dp.spent().epsilon);
  assert.equal(copy.allowsNextRound(), false);
});

test("bad DP options are one E_DP_CONFIG error each", () => {
  const bad: Partial<DpOptions>[] = [
    { noiseMultiplier: 0 },
    { clip: -1 },
    { delta: 0 },
    { delta: 1 },
    { placement: "everywhere" as never },
    { fleetSize: 5 },
    { placement: "distributed", minSurvivors: 11 },
    { epsilonBudget: -1 },
  ];
  for (const b of bad)
    assert.throws(() => new DifferentialPrivacy(opts(b)), { code: "E_DP_CONFIG" }, JSON.stringify(b));
});
