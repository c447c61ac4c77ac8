/**
 * The cost of central DP in the aggregator: `updates` updates of `params` values through the DP wrapper (server-side
 * L2 clipping folded into the SIMD accumulator, equal weights, Gaussian noise on the sum from the CSPRNG), against
 * the plain FedAvg accumulator on the same data in the same process, runs interleaved; medians reported.
 */
import { fail } from "../errors";
import { Accumulator } from "../tensor/accumulator";
import { makeUpdates, median } from "../tensor/bench-aggregate";
import type { RoundAggregation } from "../strategies/strategy";
import { DifferentialPrivacy } from "./dp";

export interface DpAggregateBenchResult {
  updates: number;
  params: number;
  /** Plain FedAvg accumulator, float32 input GB/s (1e9 bytes). */
  gbPerSecond: number;
  /** Central DP: clipping + sum + noise + mean, GB/s of float32 input. */
  dpGbPerSecond: number;
  /** dpGbPerSecond / gbPerSecond. */
  ratio: number;
  /** Median time to draw the noise and finish the round, ms. */
  noiseMs: number;
}

export function benchDpAggregate(opts: {
  updates: number;
  params: number;
  repeats?: number;
}): DpAggregateBenchResult {
  const { updates, params } = opts;
  const repeats = opts.repeats ?? 5;
  for (const [name, v] of [
    ["updates", updates],
    ["params", params],
    ["repeats", repeats],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 1)
      fail("E_CONFIG_BENCH", `${name} must be a positive integer, got ${v}`);
  }
  const distinct = Math.min(updates, Math.max(2, Math.ceil((128 * 1024 * 1024) / (params * 4))));
  const pool = makeUpdates(distinct, params);
  const out = new Float32Array(params);
  const plain = (): number => {
    const acc = new Accumulator(params);
    const t0 = performance.now();
    for (let u = 0; u < updates; u++) acc.add(pool[u % distinct]!, 1);
    acc.mean(out);
    const ms = performance.now() - t0;
    acc.dispose();
    return ms;
  };
  const sink: RoundAggregation = {
    add: () => undefined,
    addAggregate: (a) => out.set(a.mean),
    count: 0,
    finish: () => ({
      weights: out,
      metrics: { updates: 0, totalSamples: 0, trainLoss: NaN, trainAccuracy: NaN },
    }),
  };
  const private_ = (): { ms: number; noiseMs: number } => {
    const dp = new DifferentialPrivacy({
      noiseMultiplier: 1,
      clip: 10, // below the norm of the uniform test vectors at ≥ 400 values: every update is scaled
      delta: 1e-5,
      placement: "central",
      clientsPerRound: updates,
      fleetSize: updates * 10,
    });
    const current = new Float32Array(params);
    const t0 = performance.now();
    const agg = dp.aggregate(sink, { round: 1, layoutHash: "bench", length: params, current });
    for (let u = 0; u < updates; u++) {
      agg.add({
        deviceId: `d${u}`,
        numSamples: 1,
        delta: pool[u % distinct]!,
        metrics: { loss: 0, accuracy: 0, trainMs: 0 },
      });
    }
    const t1 = performance.now();
    agg.finish([]);
    const t2 = performance.now();
    return { ms: t2 - t0, noiseMs: t2 - t1 };
  };
  plain();
  private_(); // warm-up
  const a: number[] = [];
  const b: number[] = [];
  const n: number[] = [];
  for (let r = 0; r < repeats; r++) {
    a.push(plain());
    const p = private_();
    b.push(p.ms);
    n.push(p.noiseMs);
  }
  const bytes = updates * params * 4;
  const gb = bytes / (median(a) / 1000) / 1e9;
  const dpGb = bytes / (median(b) / 1000) / 1e9;
  return { updates, params, gbPerSecond: gb, dpGbPerSecond: dpGb, ratio: dpGb / gb, noiseMs: median(n) };
}
