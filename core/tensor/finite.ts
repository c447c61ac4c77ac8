/**
 * Finiteness of a model's weights. A global model with a NaN or ±Infinity anywhere (a diverging optimizer, an
 * overflowing float32 sum, non-finite noise) can never recover: every later update is computed from it, so a job
 * must stop as soon as its global model is not finite instead of running on at chance accuracy.
 */
import type { WeightLayout } from "./layout";

/** Index of the first NaN or ±Infinity in `values`, or −1 when every value is finite. */
export function firstNonFinite(values: ArrayLike<number>): number {
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    // v − v is 0 for a finite v and NaN for NaN and ±Infinity: one subtraction, no call per value.
    if (v - v !== 0) return i;
  }
  return -1;
}

/**
 * Why a global model is not finite, as one line naming the round, or undefined when every weight is finite.
 * `round` is the round whose aggregate produced `weights` (0: the initial model). With a layout, the first
 * non-finite value is named by its tensor.
 *   e.g. "the global model is not finite after round 3: 12 of 1024 weights are NaN or ±Infinity
 *         (first: index 17 = NaN, in 'dense/kernel')"
 */
export function nonFiniteModelReason(
  weights: ArrayLike<number>,
  round: number,
  layout?: WeightLayout,
): string | undefined {
  const first = firstNonFinite(weights);
  if (first < 0) return undefined;
  let count = 0;
  for (let i = first; i < weights.length; i++) if (!Number.isFinite(weights[i]!)) count++;
  const entry = layout?.entries.find((e) => first >= e.offset && first < e.offset + e.size);
  const when = round === 0 ? "initially" : `after round ${round}`;
  return (
    `the global model is not finite ${when}: ${count} of ${weights.length} weights are NaN or ±Infinity ` +
    `(first: index ${first} = ${String(weights[first])}${entry ? `, in '${entry.name}'` : ""})`
  );
}

/** True when every value of `weights` is finite (no NaN, no ±Infinity). */
export function isFiniteWeights(weights: ArrayLike<number>): boolean {
  return firstNonFinite(weights) < 0;
}
