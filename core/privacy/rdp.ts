/**
 * Rényi differential privacy (RDP) accountant for the Poisson-subsampled Gaussian mechanism.
 *
 * References:
 *  - I. Mironov, "Rényi Differential Privacy", CSF 2017 (arXiv:1702.07476): composition, classic conversion.
 *  - I. Mironov, K. Talwar, L. Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
 *    2019 (arXiv:1908.10530): the A_α expansions for integer (Sec. 3.3) and fractional (Sec. 3.4) orders.
 *  - C. Canonne, G. Kamath, T. Steinke, "The Discrete Gaussian for Differential Privacy", 2020
 *    (arXiv:2004.00010, Prop. 12) and S. Asoodeh et al., "Three Variants of Differential Privacy:
 *    Lossless Conversion and Applications", 2021 (arXiv:2008.06529): the tighter RDP→(ε,δ) conversion.
 *
 * The numerics follow TF Privacy's `rdp_accountant.py` and Google dp_accounting's
 * `rdp_privacy_accountant.py` (`_compute_log_a_int`, `_compute_log_a_frac`, `compute_epsilon`).
 */
import { fail } from "../errors";

export type RdpConversion = "classic" | "tight";

/** Orders α: 1.25 … 4.5, the integers 5..63, then 128, 256, 512. */
export const DEFAULT_ORDERS: readonly number[] = Object.freeze([
  1.25,
  1.5,
  1.75,
  2,
  2.25,
  2.5,
  3,
  3.5,
  4,
  4.5,
  ...Array.from({ length: 59 }, (_, i) => i + 5),
  128,
  256,
  512,
]);

const LOG_HALF = Math.log(0.5);
const SQRT2 = Math.SQRT2;
const SQRT_PI = Math.sqrt(Math.PI);
/** Terms of the fractional-order series before giving up (dp_accounting's _MAX_STEPS_LOG_A_FRAC). */
const MAX_FRAC_TERMS = 1000;

// ---------------------------------------------------------------- log-space helpers

/** log(e^x + e^y). */
function logAdd(logx: number, logy: number): number {
  const a = Math.min(logx, logy);
  const b = Math.max(logx, logy);
  if (a === -Infinity) return b;
  return Math.log1p(Math.exp(a - b)) + b;
}

/** erfcx(x) = e^{x²}·erfc(x) for x ≥ 1, by the Laplace continued fraction (modified Lentz). */
function erfcxLarge(x: number): number {
  // erfc(x) = e^{-x²}/√π · 1/(x + (1/2)/(x + (2/2)/(x + (3/2)/(x + …))))
  const tiny = 1e-300;
  let f = x;
  let c = x;
  let d = 0;
  for (let j = 1; j < 5000; j++) {
    const a = j / 2;
    d = x + a * d;
    if (d === 0) d = tiny;
    c = x + a / c;
    if (c === 0) c = tiny;
    d = 1 / d;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return 1 / (SQRT_PI * f);
}

/** erf(x) for |x| < 1 via e^{-x²}·Σ 2ⁿx^{2n+1}/(1·3·…·(2n+1)) — all terms positive, no cancellation. */
function erfSmall(x: number): number {
  const x2 = x * x;
  let term = x;
  let sum = x;
  for (let n = 1; n < 200; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
    if (term < 1e-17 * sum) break;
  }
  return ((2 / SQRT_PI) * Math.exp(-x2) * sum) as number;
}

/** erfc(x) for x ≥ 0 (may underflow to 0 for x ≳ 27; use logErfc there). */
function erfcNonNeg(x: number): number {
  return x < 1 ? 1 - erfSmall(x) : Math.exp(-x * x) * erfcxLarge(x);
}

/** Numerically stable log(erfc(x)) for all real x (finite for large x via erfcx). */
export function logErfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x === Infinity) return -Infinity;
  if (x === -Infinity) return Math.LN2;
  if (x < 0) return Math.log(2 - erfcNonNeg(-x));
  if (x < 1) return Math.log1p(-erfSmall(x));
  return -x * x + Math.log(erfcxLarge(x));
}

// ---------------------------------------------------------------- A_α (Mironov–Talwar–Zhang 2019)

/** log A_α for integer α: binomial expansion Σ C(α,i) qⁱ(1−q)^{α−i} exp((i²−i)/(2σ²)). */
function computeLogAInt(q: number, sigma: number, alpha: number): number {
  const logQ = Math.log(q);
  const log1mQ = Math.log1p(-q);
  const twoSigma2 = 2 * sigma * sigma;
  let logA = -Infinity;
  let logBinom = 0; // log C(α, 0)
  for (let i = 0; i <= alpha; i++) {
    if (i > 0) logBinom += Math.log(alpha - i + 1) - Math.log(i);
    const s = logBinom + i * logQ + (alpha - i) * log1mQ + (i * i - i) / twoSigma2;
    logA = logAdd(logA, s);
  }
  return logA;
}

/**
 * log A_α for fractional α: the two-series method of MTZ 2019 (arXiv:1908.10530), ported from dp_accounting's
 * `_compute_log_a_frac` (google/differential-privacy, python/dp_accounting/dp_accounting/rdp/
 * rdp_privacy_accountant.py). A_α splits at z0 = σ² log(1/q − 1) + ½ into two integrals, each a binomial
 * series in i = 0, 1, … with erfc tail factors. For fractional α the coefficients C(α, i) alternate in sign
 * once i > α; like dp_accounting we add every term's magnitude |C(α, i)|·…, so the result is an upper bound on
 * the exact A_α (Σ|t_i| ≥ Σ t_i) that no cancellation or round-off can push below it — an accountant may be
 * loose, never optimistic. (A signed sum is exact in exact arithmetic, e.g. 15% smaller per step at q = 0.05,
 * σ = 0.8, α = 1.5, but it relies on cancellation and is not what the reference accountant reports.)
 * The series stops, as dp_accounting's, once both terms decrease and are below e^-30 of the running total;
 * NaN when it has not after `maxTerms` terms (dp_accounting: 1000 steps, order then excluded).
 */
function computeLogAFrac(q: number, sigma: number, alpha: number, maxTerms = MAX_FRAC_TERMS): number {
  let logA0 = -Infinity;
  let logA1 = -Infinity;
  const sigma2 = sigma * sigma;
  const z0 = sigma2 * Math.log(1 / q - 1) + 0.5;
  const logQ = Math.log(q);
  const log1mQ = Math.log1p(-q);
  let logAbsCoef = 0; // log |C(α, i)| (dp_accounting's _log_comb via gammaln is the same magnitude)
  let lastS0 = -Infinity;
  let lastS1 = -Infinity;
  for (let i = 0; i < maxTerms; i++) {
    if (i > 0) logAbsCoef += Math.log(Math.abs((alpha - i + 1) / i));
    const j = alpha - i;
    const logT0 = logAbsCoef + i * logQ + j * log1mQ;
    const logT1 = logAbsCoef + j * logQ + i * log1mQ;
    const logE0 = LOG_HALF + logErfc((i - z0) / (SQRT2 * sigma));
    const logE1 = LOG_HALF + logErfc((z0 - j) / (SQRT2 * sigma));
    const logS0 = logT0 + (i * i - i) / (2 * sigma2) + logE0;
    const logS1 = logT1 + (j * j - j) / (2 * sigma2) + logE1;
    logA0 = logAdd(logA0, logS0);
    logA1 = logAdd(logA1, logS1);
    const total = logAdd(logA0, logA1);
    if (Number.isNaN(total)) return NaN;
    // Converged: both terms decreasing and negligible relative to the total.
    if (logS0 < lastS0 && logS1 < lastS1 && Math.max(logS0, logS1) < total - 30) return total;
    lastS0 = logS0;
    lastS1 = logS1;
  }
  return NaN; // did not converge
}

// ---------------------------------------------------------------- validation

function checkQ(q: number): void {
  if (!(typeof q === "number" && q >= 0 && q <= 1))
    fail("E_DP_CONFIG", `sampling rate q must be in [0, 1], got ${q}`);
}
function checkSigma(sigma: number): void {
  if (!(typeof sigma === "number" && sigma >= 0 && sigma < Infinity)) {
    fail("E_DP_CONFIG", `noise multiplier must be a finite number ≥ 0, got ${sigma}`);
  }
}
function checkSteps(steps: number): void {
  if (!(Number.isSafeInteger(steps) && steps > 0))
    fail("E_DP_CONFIG", `steps must be a positive integer, got ${steps}`);
}
function checkDelta(delta: number): void {
  if (!(typeof delta === "number" && delta > 0 && delta < 1))
    fail("E_DP_CONFIG", `delta must be in (0, 1), got ${delta}`);
}
function checkOrder(order: number): void {
  if (!(typeof order === "number" && order > 1)) fail("E_DP_CONFIG", `RDP order must be > 1, got ${order}`);
}

// ---------------------------------------------------------------- public API

/**
 * RDP ε(α) of one step of the Poisson-subsampled Gaussian mechanism with sampling rate q and noise
 * multiplier σ (noise std / L2 sensitivity). Returns Infinity for σ = 0 or α = ∞. A fractional order gets
 * min(dp_accounting's series bound, the exact value at ⌈α⌉); the latter alone when the series does not converge.
 */
export function rdpSampledGaussian(q: number, noiseMultiplier: number, order: number): number {
  checkQ(q);
  checkSigma(noiseMultiplier);
  checkOrder(order);
  if (q === 0) return 0;
  if (noiseMultiplier === 0) return Infinity;
  if (q === 1) return order / (2 * noiseMultiplier * noiseMultiplier);
  if (order === Infinity) return Infinity;
  let rdp: number;
  if (Number.isInteger(order)) {
    rdp = computeLogAInt(q, noiseMultiplier, order) / (order - 1);
  } else {
    // RDP is non-decreasing in α (Rényi divergence is monotone in its order: van Erven & Harremoës, "Rényi
    // Divergence and Kullback-Leibler Divergence", IEEE Trans. Inf. Theory 2014, Thm. 3), so the exact value at
    // ⌈α⌉ also bounds order α. Taking the smaller of the two keeps the fractional bound between its integer
    // neighbours and gives a usable value when the series does not converge.
    const up = Math.ceil(order);
    const atCeil = computeLogAInt(q, noiseMultiplier, up) / (up - 1);
    const frac = computeLogAFrac(q, noiseMultiplier, order) / (order - 1);
    rdp = Number.isNaN(frac) ? atCeil : Math.min(frac, atCeil);
  }
  if (Number.isNaN(rdp)) return Infinity;
  // True RDP is ≥ 0; clamp round-off (a log A of −1e-17, say) so the conversion never sees rdp < 0.
  return Math.max(0, rdp);
}

/** RDP of `steps` adaptive compositions (RDP composes additively), one value per order. */
export function computeRdp(
  q: number,
  noiseMultiplier: number,
  steps: number,
  orders: readonly number[] = DEFAULT_ORDERS,
): number[] {
  checkSteps(steps);
  return orders.map((a) => {
    const r = rdpSampledGaussian(q, noiseMultiplier, a);
    return r === 0 ? 0 : r * steps;
  });
}

export interface EpsilonResult {
  epsilon: number;
  /** The order α attaining the minimum (NaN if no order is usable). */
  order: number;
}

/**
 * Converts an RDP curve into (ε, δ)-DP, minimising over orders.
 *  - "classic" (Mironov 2017, Prop. 3): ε = min_α rdp(α) + ln(1/δ)/(α−1).
 *  - "tight" (Canonne–Kamath–Steinke 2020 Prop. 12; Asoodeh et al. 2021), as dp_accounting's
 *    `compute_epsilon`: ε = rdp + log1p(−1/α) − (log δ + log α)/(α−1), with ε = 0 when
 *    δ² + expm1(−rdp) > 0 (the KL bound), ε = ∞ for α ≤ 1.01, and the result clamped at 0.
 * Orders < 1 are ignored. A negative or NaN rdp is an input error (dp_accounting raises too).
 */
export function epsilonFromRdp(
  orders: readonly number[],
  rdp: readonly number[],
  delta: number,
  conversion: RdpConversion = "tight",
): EpsilonResult {
  checkDelta(delta);
  if (orders.length !== rdp.length) {
    fail("E_DP_CONFIG", `orders (${orders.length}) and rdp (${rdp.length}) differ in length`);
  }
  if (conversion !== "classic" && conversion !== "tight") {
    fail("E_DP_CONFIG", `conversion must be 'tight' or 'classic', got '${String(conversion)}'`);
  }
  const logDelta = Math.log(delta);
  let best = Infinity;
  let bestOrder = NaN;
  for (let k = 0; k < orders.length; k++) {
    const a = orders[k]!;
    const r = rdp[k]!;
    if (!(a >= 1)) continue;
    if (!(r >= 0)) fail("E_DP_CONFIG", `RDP values must be ≥ 0, got ${r} at order ${a}`);
    let eps: number;
    if (conversion === "classic") {
      eps = a > 1 ? r - logDelta / (a - 1) : Infinity;
    } else if (delta * delta + Math.expm1(-r) > 0) {
      eps = 0; // δ ≤ sqrt(1 − exp(−KL))
    } else if (a > 1.01) {
      eps = r + Math.log1p(-1 / a) - (logDelta + Math.log(a)) / (a - 1);
    } else {
      eps = Infinity;
    }
    if (Number.isNaN(bestOrder) || eps < best) {
      best = eps;
      bestOrder = a;
    }
  }
  return { epsilon: Math.max(0, best), order: bestOrder };
}

export interface SolveNoiseOptions {
  targetEpsilon: number;
  q: number;
  steps: number;
  delta: number;
  conversion?: RdpConversion;
  orders?: readonly number[];
}

export interface SolveNoiseResult extends EpsilonResult {
  noiseMultiplier: number;
}

/** Largest noise multiplier searched; beyond it the target is declared unreachable. */
export const MAX_NOISE_MULTIPLIER = 1e4;

/**
 * Smallest σ (to 1e-6 relative, rounded up so ε(σ) ≤ target) whose RDP-accounted ε after `steps`
 * steps at sampling rate q is at most targetEpsilon. ε is non-increasing in σ, so bisection applies.
 */
export function solveNoiseMultiplier(o: SolveNoiseOptions): SolveNoiseResult {
  const { targetEpsilon, q, steps, delta } = o;
  const conversion = o.conversion ?? "tight";
  const orders = o.orders ?? DEFAULT_ORDERS;
  if (!(typeof targetEpsilon === "number" && targetEpsilon > 0 && targetEpsilon < Infinity)) {
    fail("E_DP_CONFIG", `target epsilon must be a positive finite number, got ${targetEpsilon}`);
  }
  checkQ(q);
  checkSteps(steps);
  checkDelta(delta);
  const eps = (sigma: number) =>
    epsilonFromRdp(orders, computeRdp(q, sigma, steps, orders), delta, conversion);
  if (q === 0) return { noiseMultiplier: 0, ...eps(0) };
  let hi = 1;
  let atHi = eps(hi);
  while (atHi.epsilon > targetEpsilon) {
    if (hi >= MAX_NOISE_MULTIPLIER) {
      fail(
        "E_DP_UNREACHABLE",
        `epsilon ${targetEpsilon} is not reachable with noise multiplier ≤ ${MAX_NOISE_MULTIPLIER} ` +
          `(q=${q}, steps=${steps}, delta=${delta}; ε=${atHi.epsilon} at σ=${MAX_NOISE_MULTIPLIER})`,
      );
    }
    hi = Math.min(hi * 2, MAX_NOISE_MULTIPLIER);
    atHi = eps(hi);
  }
  let lo = hi === 1 ? 0 : hi / 2; // ε(lo) > target (or lo = 0, where ε = ∞)
  while (hi - lo > 1e-6 * hi) {
    const mid = (lo + hi) / 2;
    const atMid = eps(mid);
    if (atMid.epsilon <= targetEpsilon) {
      hi = mid;
      atHi = atMid;
    } else {
      lo = mid;
    }
  }
  return { noiseMultiplier: hi, ...atHi };
}

/** Internals exposed for tests only. */
export const _internal = { computeLogAInt, computeLogAFrac };
