/**
 * Byzantine-robust aggregation rules over one round's updates (issue 16; groundwork: the rules as pure functions,
 * not yet wired into the strategies). Each takes every update of the round in memory — n vectors of d floats, so
 * 100 devices × 1M parameters hold 400 MB of updates besides the model — and returns the aggregate delta plus who
 * it kept, so the round record can say why a device was left out.
 *
 * - coordinate-wise median and trimmed mean: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed
 *   Learning: Towards Optimal Statistical Rates", ICML 2018;
 * - Krum and Multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine
 *   Tolerant Gradient Descent", NeurIPS 2017;
 * - geometric median by the smoothed Weiszfeld algorithm (RFA): Pillutla, Kakade, Harchaoui, "Robust Aggregation for
 *   Federated Learning", IEEE TSP 2022;
 * - centered clipping: Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021;
 * - norm bounding: Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019.
 */
import { fail } from "../errors";

/** One device's update in a round. */
export interface RobustInput {
  readonly deviceId: string;
  readonly delta: Float32Array;
  /** The update's weight (its capped sample count); rules that are not weighted ignore it. */
  readonly weight: number;
}

export interface RobustOutput {
  readonly delta: Float32Array;
  /** Devices whose update entered the aggregate (all of them for coordinate-wise rules). */
  readonly kept: readonly string[];
  /** Devices left out entirely, each with why. */
  readonly dropped: readonly { readonly deviceId: string; readonly reason: string }[];
}

function check(inputs: readonly RobustInput[], rule: string): number {
  if (inputs.length === 0) fail("E_STRATEGY_SIZE", `${rule}: no update to aggregate`);
  const d = inputs[0]!.delta.length;
  for (const u of inputs)
    if (u.delta.length !== d)
      fail(
        "E_STRATEGY_SIZE",
        `${rule}: update of '${u.deviceId}' has ${u.delta.length} values, expected ${d}`,
      );
  return d;
}

const everyone = (inputs: readonly RobustInput[]): string[] => inputs.map((u) => u.deviceId);

/**
 * A new Float32Array of v[i] × k. A plain loop: `Float32Array.from(v, (x) => x * k)` goes through the iterator
 * protocol and a call per element, ~30x slower at 1M values (it dominated norm bounding and Weiszfeld's steps).
 */
export function scaled(v: ArrayLike<number>, k: number): Float32Array {
  const out = new Float32Array(v.length);
  for (let i = 0; i < out.length; i++) out[i] = v[i]! * k;
  return out;
}

/** Σ w_k Δ_k / Σ w_k: the plain FedAvg mean (the reference every rule is compared with). */
export function weightedMean(inputs: readonly RobustInput[]): RobustOutput {
  const d = check(inputs, "mean");
  const out = new Float64Array(d);
  let total = 0;
  for (const u of inputs) {
    total += u.weight;
    for (let i = 0; i < d; i++) out[i]! += u.weight * u.delta[i]!;
  }
  if (!(total > 0)) fail("E_STRATEGY_SIZE", "mean: the updates' weights sum to zero");
  return { delta: scaled(out, 1 / total), kept: everyone(inputs), dropped: [] };
}

/**
 * Rearranges `a[lo..hi]` so that a[k] holds the value a full sort would put there, smaller-or-equal values before
 * it and larger-or-equal after (Hoare's selection, "Algorithm 65: FIND", CACM 1961), in expected linear time.
 */
function select(a: Float32Array, k: number, lo = 0, hi = a.length - 1): void {
  while (hi > lo) {
    const pivot = a[(lo + hi) >> 1]!;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! < pivot) i++;
      while (a[j]! > pivot) j--;
      if (i <= j) {
        const t = a[i]!;
        a[i] = a[j]!;
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return;
  }
}

/**
 * Coordinate-wise trimmed mean: per coordinate, drop the `b` largest and `b` smallest values and average the rest
 * (Yin et al. 2018, Definition 2). `b = 0` is the unweighted mean; needs n > 2b.
 */
export function trimmedMean(inputs: readonly RobustInput[], b: number): RobustOutput {
  const d = check(inputs, "trimmed-mean");
  const n = inputs.length;
  if (!Number.isInteger(b) || b < 0 || n <= 2 * b)
    fail(
      "E_STRATEGY_SIZE",
      `trimmed-mean: trimming ${b} from each side needs more than ${2 * b} updates, got ${n}`,
    );
  const column = new Float32Array(n);
  const out = new Float32Array(d);
  for (let i = 0; i < d; i++) {
    for (let k = 0; k < n; k++) column[k] = inputs[k]!.delta[i]!;
    if (b > 0) {
      // The b smallest before index b, the b largest after n − b − 1: the middle is what stays.
      select(column, b);
      select(column, n - b - 1, b);
    }
    let s = 0;
    for (let k = b; k < n - b; k++) s += column[k]!;
    out[i] = s / (n - 2 * b);
  }
  return { delta: out, kept: everyone(inputs), dropped: [] };
}

/** Coordinate-wise median (Yin et al. 2018, Definition 1); an even count averages the two middle values. */
export function coordinateMedian(inputs: readonly RobustInput[]): RobustOutput {
  const d = check(inputs, "median");
  const n = inputs.length;
  const column = new Float32Array(n);
  const out = new Float32Array(d);
  const mid = n >> 1;
  for (let i = 0; i < d; i++) {
    for (let k = 0; k < n; k++) column[k] = inputs[k]!.delta[i]!;
    select(column, mid);
    if (n % 2 === 1) out[i] = column[mid]!;
    else {
      // The lower middle is the largest value before `mid`.
      let lower = column[0]!;
      for (let k = 1; k < mid; k++) if (column[k]! > lower) lower = column[k]!;
      out[i] = (lower + column[mid]!) / 2;
    }
  }
  return { delta: out, kept: everyone(inputs), dropped: [] };
}

function squaredDistance(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const t = a[i]! - b[i]!;
    s += t * t;
  }
  return s;
}

/** Coordinates per block of pairwiseSquaredDistances: n blocks of 4 KB stay in cache while every pair is done. */
const DISTANCE_BLOCK = 1024;

/**
 * All pairwise squared L2 distances of n equal-length vectors, as an n × n row-major Float64Array (zero
 * diagonal, symmetric). The naive loop streams both vectors of every pair from memory — n(n−1)/2 × 2d floats, 40
 * GB at 100 × 1M — and is bound by memory bandwidth. Here the coordinates are cut into blocks of DISTANCE_BLOCK:
 * within a block every pair is computed while the n slices stay in cache (each vector is read from memory once),
 * and each x[i] is compared with four other vectors at a time (register blocking: one load of x[i] serves four
 * differences). Exact in the same sense as the naive loop: each (x_i − y_i)² is formed in float64 from the float32
 * values and summed in float64; only the order of the additions differs (per block, then across blocks).
 */
export function pairwiseSquaredDistances(vectors: readonly Float32Array[]): Float64Array {
  const n = vectors.length;
  const out = new Float64Array(n * n);
  if (n === 0) return out;
  const d = vectors[0]!.length;
  for (const v of vectors)
    if (v.length !== d)
      fail("E_STRATEGY_SIZE", `pairwise distances: a vector has ${v.length} values, expected ${d}`);
  for (let lo = 0; lo < d; lo += DISTANCE_BLOCK) {
    const hi = Math.min(d, lo + DISTANCE_BLOCK);
    for (let a = 0; a < n; a++) {
      const x = vectors[a]!;
      const row = a * n;
      let b = a + 1;
      for (; b + 3 < n; b += 4) {
        const y0 = vectors[b]!;
        const y1 = vectors[b + 1]!;
        const y2 = vectors[b + 2]!;
        const y3 = vectors[b + 3]!;
        let s0 = 0;
        let s1 = 0;
        let s2 = 0;
        let s3 = 0;
        for (let i = lo; i < hi; i++) {
          const xi = x[i]!;
          const t0 = xi - y0[i]!;
          const t1 = xi - y1[i]!;
          const t2 = xi - y2[i]!;
          const t3 = xi - y3[i]!;
          s0 += t0 * t0;
          s1 += t1 * t1;
          s2 += t2 * t2;
          s3 += t3 * t3;
        }
        out[row + b]! += s0;
        out[row + b + 1]! += s1;
        out[row + b + 2]! += s2;
        out[row + b + 3]! += s3;
      }
      for (; b < n; b++) {
        const y = vectors[b]!;
        let s = 0;
        for (let i = lo; i < hi; i++) {
          const t = x[i]! - y[i]!;
          s += t * t;
        }
        out[row + b]! += s;
      }
    }
  }
  for (let a = 0; a < n; a++) for (let b = a + 1; b < n; b++) out[b * n + a] = out[a * n + b]!;
  return out;
}

export function l2Norm(v: Float32Array): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  return Math.sqrt(s);
}

/**
 * Multi-Krum (Blanchard et al. 2017, §4): each update's score is the sum of squared distances to its n − f − 2
 * nearest neighbours; the `m` lowest-scoring updates are averaged (m = 1 is Krum). Needs n > 2f + 2.
 */
export function multiKrum(inputs: readonly RobustInput[], f: number, m = 1): RobustOutput {
  check(inputs, "krum");
  const n = inputs.length;
  if (!Number.isInteger(f) || f < 0 || n <= 2 * f + 2)
    fail("E_STRATEGY_SIZE", `krum: tolerating ${f} attackers needs more than ${2 * f + 2} updates, got ${n}`);
  if (!Number.isInteger(m) || m < 1 || m > n)
    fail("E_STRATEGY_SIZE", `multi-krum: m must be 1 to ${n}, got ${m}`);
  const flat = pairwiseSquaredDistances(inputs.map((u) => u.delta));
  const dist: number[][] = Array.from({ length: n }, (_, a) => Array.from(flat.subarray(a * n, (a + 1) * n)));
  const neighbours = n - f - 2;
  const scores = dist.map((row, a) =>
    row
      .filter((_, b) => b !== a)
      .sort((x, y) => x - y)
      .slice(0, neighbours)
      .reduce((s, x) => s + x, 0),
  );
  const order = scores.map((s, k) => [s, k] as const).sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  const chosen = new Set(order.slice(0, m).map(([, k]) => k));
  const kept = inputs.filter((_, k) => chosen.has(k));
  const mean = weightedMean(kept.map((u) => ({ ...u, weight: 1 })));
  return {
    delta: mean.delta,
    kept: kept.map((u) => u.deviceId),
    dropped: inputs
      .map((u, k) => ({ u, k }))
      .filter(({ k }) => !chosen.has(k))
      .map(({ u, k }) => ({
        deviceId: u.deviceId,
        reason: `krum score ${scores[k]!.toExponential(3)} not among the ${m} lowest`,
      })),
  };
}

/**
 * Geometric median by smoothed Weiszfeld iterations (Pillutla et al. 2022, Algorithm 2, RFA): z ← Σ β_k Δ_k / Σ β_k
 * with β_k = w_k / max(ν, ‖z − Δ_k‖), from the weighted mean, until z moves less than `tol`·‖z‖ or `maxIter`.
 */
export function geometricMedian(
  inputs: readonly RobustInput[],
  options: { readonly nu?: number; readonly maxIter?: number; readonly tol?: number } = {},
): RobustOutput & { readonly iterations: number } {
  const d = check(inputs, "geomed");
  const nu = options.nu ?? 1e-6;
  const maxIter = options.maxIter ?? 100;
  const tol = options.tol ?? 1e-6;
  let z = weightedMean(inputs).delta;
  let iterations = 0;
  for (; iterations < maxIter; iterations++) {
    const next = new Float64Array(d);
    let total = 0;
    for (const u of inputs) {
      const beta = u.weight / Math.max(nu, Math.sqrt(squaredDistance(z, u.delta)));
      total += beta;
      for (let i = 0; i < d; i++) next[i]! += beta * u.delta[i]!;
    }
    const moved = scaled(next, 1 / total);
    const step = Math.sqrt(squaredDistance(moved, z));
    z = moved;
    if (step <= tol * Math.max(1e-12, l2Norm(z))) {
      iterations++;
      break;
    }
  }
  return { delta: z, kept: everyone(inputs), dropped: [], iterations };
}

/**
 * Centered clipping (Karimireddy et al. 2021, eq. 3): from a reference v (the previous round's aggregate, or zero),
 * v ← v + (1/n) Σ (Δ_k − v)·min(1, τ/‖Δ_k − v‖), `iterations` times (the paper uses 1 with momentum, more without).
 */
export function centeredClip(
  inputs: readonly RobustInput[],
  tau: number,
  options: { readonly reference?: Float32Array; readonly iterations?: number } = {},
): RobustOutput {
  const d = check(inputs, "centered-clip");
  if (!(tau > 0)) fail("E_STRATEGY_SIZE", `centered-clip: τ must be positive, got ${tau}`);
  const v = options.reference ? Float32Array.from(options.reference) : new Float32Array(d);
  if (v.length !== d)
    fail("E_STRATEGY_SIZE", `centered-clip: the reference has ${v.length} values, expected ${d}`);
  const n = inputs.length;
  for (let it = 0; it < (options.iterations ?? 3); it++) {
    const step = new Float64Array(d);
    for (const u of inputs) {
      const scale = Math.min(1, tau / Math.max(1e-12, Math.sqrt(squaredDistance(u.delta, v))));
      for (let i = 0; i < d; i++) step[i]! += (u.delta[i]! - v[i]!) * scale;
    }
    for (let i = 0; i < d; i++) v[i] = v[i]! + step[i]! / n;
  }
  return { delta: v, kept: everyone(inputs), dropped: [] };
}

/**
 * Norm bounding (Sun et al. 2019): each update scaled to norm at most `bound` — a fixed number, or the
 * `quantile` of this round's norms (e.g. 0.5: the median norm). Returns the clipped updates and the bound used.
 */
export function boundNorms(
  inputs: readonly RobustInput[],
  bound: { readonly fixed: number } | { readonly quantile: number },
  /** The inputs' L2 norms when the caller has them already (one pass over the round saved). */
  known?: readonly number[],
): { readonly inputs: RobustInput[]; readonly bound: number; readonly clipped: readonly string[] } {
  check(inputs, "norm-bound");
  const norms = known?.length === inputs.length ? known : inputs.map((u) => l2Norm(u.delta));
  let c: number;
  if ("fixed" in bound) {
    if (!(bound.fixed > 0))
      fail("E_STRATEGY_SIZE", `norm-bound: the bound must be positive, got ${bound.fixed}`);
    c = bound.fixed;
  } else {
    const q = bound.quantile;
    if (!(q > 0 && q <= 1)) fail("E_STRATEGY_SIZE", `norm-bound: the quantile must be in (0, 1], got ${q}`);
    const sorted = [...norms].sort((a, b) => a - b);
    c = sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
  }
  const clipped: string[] = [];
  const out = inputs.map((u, k) => {
    const norm = norms[k]!;
    if (norm <= c || norm === 0) return u;
    clipped.push(u.deviceId);
    const s = c / norm;
    return { ...u, delta: scaled(u.delta, s) };
  });
  return { inputs: out, bound: c, clipped };
}

/**
 * FLTrust (Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping", NDSS 2021,
 * Algorithm 1): the server trains its own update g₀ on a small clean root dataset; each update's trust score is
 * TS_k = ReLU(cos(Δ_k, g₀)); each update is rescaled to ‖g₀‖ and the aggregate is Σ TS_k·(‖g₀‖/‖Δ_k‖)·Δ_k / Σ TS_k.
 * Updates with TS_k = 0 are dropped; when every score is 0 the aggregate is zero (the model is kept).
 */
export function flTrust(
  inputs: readonly RobustInput[],
  root: Float32Array,
): RobustOutput & { readonly scores: readonly number[] } {
  const d = check(inputs, "fltrust");
  if (root.length !== d)
    fail("E_STRATEGY_SIZE", `fltrust: the root update has ${root.length} values, expected ${d}`);
  const rootNorm = l2Norm(root);
  const out = new Float64Array(d);
  const scores: number[] = [];
  let total = 0;
  const kept: string[] = [];
  const dropped: { deviceId: string; reason: string }[] = [];
  for (const u of inputs) {
    const norm = l2Norm(u.delta);
    let dot = 0;
    for (let i = 0; i < d; i++) dot += u.delta[i]! * root[i]!;
    const cos = norm > 0 && rootNorm > 0 ? dot / (norm * rootNorm) : 0;
    const ts = Math.max(0, cos);
    scores.push(ts);
    if (ts === 0) {
      dropped.push({
        deviceId: u.deviceId,
        reason: `fltrust: cosine ${cos.toFixed(3)} to the root update is not positive`,
      });
      continue;
    }
    kept.push(u.deviceId);
    total += ts;
    const s = (ts * rootNorm) / norm;
    for (let i = 0; i < d; i++) out[i]! += s * u.delta[i]!;
  }
  const delta = new Float32Array(d);
  if (total > 0) for (let i = 0; i < d; i++) delta[i] = out[i]! / total;
  return { delta, kept, dropped, scores };
}
