/**
 * Codec throughput and ratio (`benchCodecs`): for each spec, the median time to encode and to decode a vector of
 * gradient-like values (normal, sd 0.01), as GB/s of float32 input (4 n bytes / time, 1e9 bytes), the compression
 * ratio 4 n / envelope bytes, and the aggregator's streaming path: decode straight into an Accumulator's input
 * view (`acquireInput()`) then `addAcquired(w)`, timed against `add(float32)` of the raw vector on the same
 * accumulator in the same run (the reference the compressed path is compared with). Returns plain objects.
 */
import { Rng } from "../data/rng";
import { fail } from "../errors";
import { Accumulator } from "../tensor/accumulator";
import { decodeTensorInto, encodeTensor } from "./envelope";
import { parseCompression } from "./spec";

export interface CodecBench {
  /** Canonical spec text. */
  spec: string;
  /** Values per vector. */
  values: number;
  envelopeBytes: number;
  /** 4 n / envelopeBytes. */
  ratio: number;
  /** Median encode throughput, GB/s of float32 input. */
  encodeGBps: number;
  /** Median decodeTensorInto throughput into a Float32Array, GB/s of float32 output. */
  decodeGBps: number;
  /** Median decode into acc.acquireInput() + acc.addAcquired(w), GB/s of float32. */
  accumulateGBps: number;
  /** Median acc.add(float32) of the raw vector on the same accumulator, same run: the reference. */
  addReferenceGBps: number;
  /** Accumulator kernel measured. */
  kernel: "wasm-simd" | "scalar";
  /** Max |decoded - x| over the vector (a sanity figure, not a bound). */
  maxAbsError: number;
}

export const DEFAULT_BENCH_SPECS: readonly string[] = [
  "none",
  "fp16",
  "int8",
  "int4",
  "int2",
  "qsgd:16",
  "topk:0.01",
  "topk:0.01+int8",
  "randk:0.01+int8",
];

/** The CNN's parameter count. */
export const DEFAULT_BENCH_SIZE = 1_663_370;

export function benchCodecs(opts: { size?: number; repeats?: number; specs?: string[] } = {}): CodecBench[] {
  const n = opts.size ?? DEFAULT_BENCH_SIZE;
  const repeats = opts.repeats ?? 5;
  if (!Number.isSafeInteger(n) || n < 1) fail("E_CONFIG_BENCH", `size must be a positive integer, got ${n}`);
  if (!Number.isSafeInteger(repeats) || repeats < 1) {
    fail("E_CONFIG_BENCH", `repeats must be a positive integer, got ${repeats}`);
  }
  const specs = (opts.specs ?? DEFAULT_BENCH_SPECS).map(parseCompression);
  const rng = new Rng(2024);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = 0.01 * rng.normal();
  const layoutHash = "ab".repeat(32);
  const segments = [n];
  const decoded = new Float32Array(n);
  const acc = new Accumulator(n);
  const bytes = 4 * n;
  const gbps = (ms: number[]): number => bytes / (median(ms) * 1e6);
  const results: CodecBench[] = [];
  try {
    for (const spec of specs) {
      const eopts = (seed: number) => ({ layoutHash, segments, seed });
      let env = encodeTensor(x, spec, eopts(0)); // warm-up
      decodeTensorInto(env, decoded);
      const enc: number[] = [];
      const dec: number[] = [];
      const accT: number[] = [];
      const ref: number[] = [];
      acc.reset();
      for (let r = 0; r < repeats + 1; r++) {
        let t = performance.now();
        env = encodeTensor(x, spec, eopts(r + 1));
        const te = performance.now() - t;
        t = performance.now();
        decodeTensorInto(env, decoded);
        const td = performance.now() - t;
        t = performance.now();
        decodeTensorInto(env, acc.acquireInput());
        acc.addAcquired(1 + r);
        const ta = performance.now() - t;
        t = performance.now();
        acc.add(x, 1 + r);
        const tr = performance.now() - t;
        if (r === 0) continue; // the first round warms the accumulator's pages and the JIT
        enc.push(te);
        dec.push(td);
        accT.push(ta);
        ref.push(tr);
      }
      let maxErr = 0;
      for (let i = 0; i < n; i++) {
        const e = Math.abs(decoded[i] - x[i]);
        if (e > maxErr) maxErr = e;
      }
      results.push({
        spec: spec.text,
        values: n,
        envelopeBytes: env.length,
        ratio: bytes / env.length,
        encodeGBps: gbps(enc),
        decodeGBps: gbps(dec),
        accumulateGBps: gbps(accT),
        addReferenceGBps: gbps(ref),
        kernel: acc.kernel,
        maxAbsError: maxErr,
      });
    }
  } finally {
    acc.dispose();
  }
  return results;
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}
