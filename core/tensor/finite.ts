/**
 * True when every value of `weights` is finite (no NaN, no ±Infinity). Summing float32 values in a double cannot
 * overflow (|x| < 3.5e38, so even 1e9 values stay far below 1.8e308), while one NaN or infinity makes the sum
 * non-finite: one cheap pass, no branch per value.
 */
export function isFiniteWeights(weights: Float32Array): boolean {
  let s = 0;
  for (let i = 0; i < weights.length; i++) s += weights[i];
  return Number.isFinite(s);
}
