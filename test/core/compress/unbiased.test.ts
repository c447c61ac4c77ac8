/**
 * Unbiasedness of the stochastic quantizers: the mean of T independent-seed decodes converges to x.
 *
 * Per value, a decode is lo + B step with B ~ Bernoulli(p), p = frac(t), t the value's position in steps; the mean of
 * T decodes is off x by (mean(B) - p) step. The check allows |mean(B) - p| <= (6 sqrt(p (1 - p) T) + 6) / T (six
 * standard errors, plus 6 / T for the Poisson-like tail when p is near 0 or 1), and, over all values together, a
 * standardised sum of the errors within 5. Deterministic rounding (to nearest) is off by min(p, 1 - p) step, over
 * 0.07 step for every p in (0.1, 0.9) at T = 2000: each test first shows that its checker rejects it.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { decodeTensorInto, encodeTensor, parseCompression } from "../../../core/compress";
import { HASH, roundUpF32, vector } from "./helpers";

const T = 2000;

/** Per value: the lower decodable level lo, the step, and p = P(round up) for an unbiased quantizer. */
interface Grid {
  lo: Float64Array;
  step: Float64Array;
  p: Float64Array;
}

/** Violations of the per-value bound, plus 1 if the standardised total error exceeds 5. */
function violations(x: Float32Array, mean: Float64Array, g: Grid): number {
  let bad = 0;
  let z = 0;
  let v = 0;
  for (let i = 0; i < x.length; i++) {
    const p = g.p[i];
    const step = g.step[i];
    if (step === 0) {
      if (mean[i] !== x[i]) bad++;
      continue;
    }
    const dev = (mean[i] - x[i]) / step; // = mean(B) - p, up to float rounding
    const allowed = (6 * Math.sqrt(p * (1 - p) * T) + 6) / T + 1e-5;
    if (Math.abs(dev) > allowed) bad++;
    z += dev;
    v += (p * (1 - p)) / T;
  }
  if (Math.abs(z) > 5 * Math.sqrt(v) + 1e-4) bad++;
  return bad;
}

/** The mean of T decodes with seeds 0..T-1. */
function meanOfDecodes(x: Float32Array, text: string): Float64Array {
  const spec = parseCompression(text);
  const out = new Float32Array(x.length);
  const sum = new Float64Array(x.length);
  for (let seed = 0; seed < T; seed++) {
    decodeTensorInto(encodeTensor(x, spec, { layoutHash: HASH, seed }), out);
    for (let i = 0; i < x.length; i++) sum[i] += out[i];
  }
  return sum.map((s) => s / T);
}

/** What deterministic round-to-nearest on the same grid would decode to. */
function nearest(g: Grid): Float64Array {
  return g.lo.map((lo, i) => lo + (g.p[i] >= 0.5 ? g.step[i] : 0));
}

function intGrid(x: Float32Array, bits: number): Grid {
  let mn = Infinity;
  let mx = -Infinity;
  for (const v of x) {
    mn = Math.min(mn, v);
    mx = Math.max(mx, v);
  }
  const L = 2 ** bits - 1;
  const step = (mx - mn) / L;
  const g: Grid = {
    lo: new Float64Array(x.length),
    step: new Float64Array(x.length),
    p: new Float64Array(x.length),
  };
  for (let i = 0; i < x.length; i++) {
    const t = ((x[i] - mn) * L) / (mx - mn);
    const f = Math.min(Math.floor(t), L);
    g.lo[i] = mn + f * step;
    g.step[i] = step;
    g.p[i] = t - f;
  }
  return g;
}

function qsgdGrid(x: Float32Array, levels: number): Grid {
  let sq = 0;
  for (const v of x) sq += v * v;
  const norm = roundUpF32(Math.sqrt(sq));
  const step = norm / levels;
  const g: Grid = {
    lo: new Float64Array(x.length),
    step: new Float64Array(x.length),
    p: new Float64Array(x.length),
  };
  for (let i = 0; i < x.length; i++) {
    const t = (Math.abs(x[i]) * levels) / norm;
    const f = Math.min(Math.floor(t), levels);
    // negative values: the grid runs downwards from -f step
    g.lo[i] = Math.sign(x[i]) * f * step;
    g.step[i] = Math.sign(x[i]) * step || step;
    g.p[i] = t - f;
  }
  return g;
}

/** One block (256 values) of gradient-like data. */
const X = vector(256, 99);

for (const bits of [2, 4, 8]) {
  test(`int${bits} is unbiased: the mean of ${T} decodes converges to x`, () => {
    const g = intGrid(X, bits);
    assert.ok(violations(X, nearest(g), g) > 0, "the check must reject deterministic rounding");
    assert.equal(violations(X, meanOfDecodes(X, `int${bits}`), g), 0);
  });
}

for (const levels of [1, 4, 16]) {
  test(`qsgd:${levels} is unbiased: the mean of ${T} decodes converges to x`, () => {
    const g = qsgdGrid(X, levels);
    assert.ok(violations(X, nearest(g), g) > 0, "the check must reject deterministic rounding");
    assert.equal(violations(X, meanOfDecodes(X, `qsgd:${levels}:256`), g), 0);
  });
}
