import { fail } from "../errors";
import { Accumulator } from "./accumulator";

export interface AggregateBenchOptions {
  updates: number;
  params: number;
  /** Timed runs; the median is reported. Default 5. */
  repeats?: number;
  /** Also time the scalar JS kernel in the same process (`referenceGbPerSecond`). Default true. */
  reference?: boolean;
}

export interface AggregateBenchResult {
  updates: number;
  params: number;
  updatesPerSecond: number;
  /** Float32 input consumed per second, 1e9 bytes: updates * params * 4 / seconds (median run). */
  gbPerSecond: number;
  /** The same measurement with the scalar JS kernel (a Float64Array running sum), same process and data. */
  referenceGbPerSecond?: number;
  /** Kernel measured for `gbPerSecond`. */
  kernel?: "wasm-simd" | "scalar";
  /** Distinct update vectors, reused round-robin; together well over the last-level cache. */
  distinctUpdates?: number;
}

/** The distinct updates span at least this many bytes (4x a 32 MiB L3), so no update is read from cache. */
const POOL_BYTES = 128 * 1024 * 1024;

/**
 * FedAvg's server hot loop: `updates` weighted updates of `params` float32 values streamed through one
 * Accumulator (each added once, weights = sample counts), then the mean. The updates are created before timing:
 * a few distinct random vectors reused round-robin, enough of them (>= 128 MiB) that every add reads its update
 * from DRAM, as a server receiving fresh updates would. One untimed warm-up run precedes the timed ones.
 */
export function benchAggregate(opts: AggregateBenchOptions): AggregateBenchResult {
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
  const distinct = Math.min(updates, Math.max(2, Math.ceil(POOL_BYTES / (params * 4))));
  const pool = makeUpdates(distinct, params);
  const weights = Array.from({ length: updates }, (_, u) => 1 + ((u * 7919) % 600)); // sample counts
  const out = new Float32Array(params);

  const run = (acc: Accumulator): number => {
    const t0 = performance.now();
    acc.reset();
    for (let u = 0; u < updates; u++) acc.add(pool[u % distinct], weights[u]);
    acc.mean(out);
    return performance.now() - t0;
  };

  const fast = new Accumulator(params);
  const reference =
    opts.reference !== false && fast.kernel !== "scalar"
      ? new Accumulator(params, { kernel: "scalar" })
      : null;
  run(fast); // warm-up: JIT, first touch of the accumulator's pages
  if (reference) run(reference);
  const times: number[] = [];
  const refTimes: number[] = [];
  const refRepeats = Math.min(repeats, 3); // the scalar loop is slow; 3 runs give a stable median
  for (let r = 0; r < repeats; r++) {
    times.push(run(fast)); // interleaved, so both see the same machine conditions
    if (reference && r < refRepeats) refTimes.push(run(reference));
  }
  const kernel = fast.kernel;
  fast.dispose();
  reference?.dispose();

  const bytes = updates * params * 4;
  const ms = median(times);
  const result: AggregateBenchResult = {
    updates,
    params,
    updatesPerSecond: updates / (ms / 1000),
    gbPerSecond: bytes / (ms / 1000) / 1e9,
    kernel,
    distinctUpdates: distinct,
  };
  if (reference) result.referenceGbPerSecond = bytes / (median(refTimes) / 1000) / 1e9;
  return result;
}

/** `count` vectors of uniform values in [-0.5, 0.5) from a fixed-seed xorshift32 (fast and reproducible). */
export function makeUpdates(count: number, params: number): Float32Array[] {
  let s = 0x9e3779b9 | 0;
  const vectors: Float32Array[] = [];
  for (let v = 0; v < count; v++) {
    const x = new Float32Array(params);
    for (let i = 0; i < params; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      x[i] = (s >>> 0) / 4294967296 - 0.5;
    }
    vectors.push(x);
  }
  return vectors;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}
