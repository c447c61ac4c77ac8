import { test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  chooseScale,
  decodeFixedPoint,
  encodeFixedPoint,
  fixedPointLimit,
} from "../../../core/secagg/fixed-point";
import { errorCode } from "../../helpers/errors";

const INT32_MAX = 2147483647;

test("chooseScale is the largest scale whose n clipped values fit the signed ring", () => {
  for (const n of [1, 3, 100, 1000, 65535]) {
    for (const c of [8, 1, 0.5, 3.3]) {
      const s = chooseScale(n, c);
      const lim = fixedPointLimit(c, s);
      assert.ok(n * lim <= INT32_MAX, `n=${n} c=${c}`);
      assert.ok(n * (lim + 1) > INT32_MAX, `n=${n} c=${c}: not the largest`);
    }
  }
  assert.equal(chooseScale(100, 8), Math.floor(INT32_MAX / 100) / 8);
  assert.equal(
    errorCode(() => chooseScale(0, 8)),
    "E_SECAGG_PARAMS",
  );
  assert.equal(
    errorCode(() => chooseScale(10, 0)),
    "E_SECAGG_PARAMS",
  );
});

test("encode then decode round-trips within 1/S, clips, weights and uses two's complement", () => {
  const S = 1000;
  const x = new Float32Array([
    0,
    1,
    -1,
    0.0004,
    -0.0004,
    3.14159,
    -2.71828,
    7.9999,
    100,
    -100,
    Infinity,
    -Infinity,
  ]);
  const enc = encodeFixedPoint(x, 1, 8, S, new Uint32Array(x.length));
  const dec = decodeFixedPoint(enc, S);
  for (let i = 0; i < x.length; i++) {
    const want = Math.max(-8, Math.min(8, x[i]));
    assert.ok(Math.abs(dec[i] - want) <= 1 / S + 1e-7, `${x[i]} -> ${dec[i]}`);
  }
  assert.equal(dec[8], 8);
  assert.equal(dec[9], -8);
  assert.equal(dec[10], 8);
  assert.equal(dec[11], -8);
  const neg = encodeFixedPoint(new Float32Array([-1]), 1, 8, 1, new Uint32Array(1));
  assert.equal(neg[0], 0xffffffff);
  // the weight factor multiplies before rounding
  const half = decodeFixedPoint(
    encodeFixedPoint(new Float32Array([2, -6]), 0.5, 8, S, new Uint32Array(2)),
    S,
  );
  assert.deepEqual([...half], [1, -3]);
  // clipping happens before weighting: 20 clips to 8, then halves to 4
  assert.equal(
    decodeFixedPoint(encodeFixedPoint(new Float32Array([20]), 0.5, 8, S, new Uint32Array(1)), S)[0],
    4,
  );
  assert.equal(
    errorCode(() => encodeFixedPoint(new Float32Array([1, NaN]), 1, 8, S, new Uint32Array(2))),
    "E_SECAGG_INPUT",
  );
  assert.equal(
    errorCode(() => encodeFixedPoint(new Float32Array([1]), 0, 8, S, new Uint32Array(1))),
    "E_SECAGG_INPUT",
  );
  assert.equal(
    errorCode(() => encodeFixedPoint(new Float32Array([1]), 1, 8, S, new Uint32Array(2))),
    "E_SECAGG_INPUT",
  );
});

/** P(X >= k) for X ~ Poisson(lambda): the tail of a rare outcome's count. */
function poissonTail(k: number, lambda: number): number {
  let term = Math.exp(-lambda);
  let below = 0;
  for (let i = 0; i < k; i++) {
    below += term;
    term *= lambda / (i + 1);
  }
  return Math.max(0, 1 - below);
}

test("stochastic rounding is unbiased (two-sided test at p ~ 1e-6)", () => {
  const n = 200_000;
  for (const v of [0.3, -0.3, 0.123456, 2.5, -7.99]) {
    const x = new Float32Array(n).fill(v);
    const S = 10;
    const enc = encodeFixedPoint(x, 1, 8, S, new Uint32Array(n));
    const ints = new Int32Array(enc.buffer);
    const y = Math.fround(v) * S;
    let sum = 0;
    let up = 0;
    for (const q of ints) {
      assert.ok(q === Math.floor(y) || q === Math.floor(y) + 1);
      sum += q;
      if (q !== Math.floor(y)) up++;
    }
    const frac = y - Math.floor(y);
    if (frac === 0) {
      assert.equal(sum, n * y);
      continue;
    }
    // Each value rounds up with probability frac. The z-test (normal approximation of the binomial count) holds only
    // when n·frac·(1−frac) is large: for -0.3·10 = -3.0000001 the rare outcome (rounding down to -4) has probability
    // 1.2e-7, 0.024 expected in n draws, and one such draw made z = −6.3 (a spurious failure). A rare outcome is
    // tested by its Poisson tail instead.
    const variance = n * frac * (1 - frac);
    if (variance >= 25) {
      const z = (up - n * frac) / Math.sqrt(variance);
      assert.ok(Math.abs(z) < 4.892, `v=${v}: mean ${sum / n} vs ${y} (z=${z.toFixed(2)})`);
    } else {
      const rare = Math.min(up, n - up);
      const q = Math.min(frac, 1 - frac);
      assert.ok(
        poissonTail(rare, n * q) > 1e-6,
        `v=${v}: ${rare} rare roundings where ${(n * q).toFixed(3)} were expected`,
      );
    }
  }
  // Two encodings of the same vector use different rounding draws.
  const x = new Float32Array(1000).fill(0.5);
  assert.notDeepEqual(
    encodeFixedPoint(x, 1, 8, 1, new Uint32Array(1000)),
    encodeFixedPoint(x, 1, 8, 1, new Uint32Array(1000)),
  );
});

test("no overflow at the headroom limit: n values at +-clip sum exactly; one more would wrap", () => {
  const n = 1000;
  const c = 8;
  const S = chooseScale(n, c);
  const d = 4;
  for (const sign of [1, -1]) {
    const x = new Float32Array(d).fill(sign * 1e9); // clipped to +-c
    const sum = new Uint32Array(d);
    const one = encodeFixedPoint(x, 1, c, S, new Uint32Array(d));
    for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) sum[j] += one[j];
    const mean = decodeFixedPoint(sum, S);
    for (const m of mean) assert.ok(Math.abs(m - sign * n * c) < 1e-3 * n * c, `${m}`);
    // contrast: the (n+1)-th value wraps around the signed ring
    for (let j = 0; j < d; j++) sum[j] += one[j];
    for (const m of decodeFixedPoint(sum, S)) assert.ok(Math.sign(m) === -sign, "expected wrap-around");
  }
});
