import assert from "node:assert/strict";
import type { FitResult, Strategy, StrategyOptions } from "../../core/strategies/strategy";

/** Strategy options for hand-computed tests: 2 clients per round, seed 1, unless overridden. */
export const strategyOptions = (over: Partial<StrategyOptions> = {}): StrategyOptions => ({
  clientsPerRound: 2,
  fit: { epochs: 1, batchSize: 4, lr: 0.1 },
  seed: 1,
  ...over,
});

/** One device's update with zero metrics. */
export const update = (deviceId: string, numSamples: number, delta: number[]): FitResult => ({
  deviceId,
  numSamples,
  delta: Float32Array.from(delta),
  metrics: { loss: 0, accuracy: 0, trainMs: 0 },
});

/** Streams the results into round r and returns the next global model. */
export function aggregateRound(s: Strategy, r: number, results: FitResult[]): number[] {
  const agg = s.beginAggregate(r);
  for (const x of results) agg.add(x);
  return [...agg.finish([]).weights];
}

export function assertClose(actual: ArrayLike<number>, expected: readonly number[], tol = 1e-6): void {
  assert.equal(actual.length, expected.length, "length");
  for (let i = 0; i < expected.length; i++) {
    assert.ok(Math.abs(actual[i] - expected[i]) <= tol, `[${i}] ${actual[i]} != ${expected[i]}`);
  }
}
