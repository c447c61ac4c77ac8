import { fail } from "../errors";

/**
 * Streaming weighted sum of equally sized Float32Array updates: the aggregator's hot loop.
 * Updates are added one at a time and never all held; `mean()` gives sum(w_i x_i) / sum(w_i).
 */
export class Accumulator {
  private readonly sum: Float64Array;
  private weightTotal = 0;
  private n = 0;
  constructor(readonly size: number) {
    this.sum = new Float64Array(size);
  }
  get count(): number {
    return this.n;
  }
  get totalWeight(): number {
    return this.weightTotal;
  }
  add(x: Float32Array, weight = 1): void {
    if (x.length !== this.size) fail("E_STRATEGY_SIZE", `update has ${x.length} values, expected ${this.size}`);
    const s = this.sum;
    for (let i = 0; i < s.length; i++) s[i] += weight * x[i];
    this.weightTotal += weight;
    this.n++;
  }
  mean(out: Float32Array = new Float32Array(this.size)): Float32Array {
    const inv = this.weightTotal > 0 ? 1 / this.weightTotal : 0;
    for (let i = 0; i < this.size; i++) out[i] = this.sum[i] * inv;
    return out;
  }
  reset(): void {
    this.sum.fill(0);
    this.weightTotal = 0;
    this.n = 0;
  }
  dispose(): void {}
}
