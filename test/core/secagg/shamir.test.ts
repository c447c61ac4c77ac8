import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import {
  combineShares,
  gfAdd,
  gfInv,
  gfMul,
  shareX,
  shareXOf,
  splitSecret,
} from "../../../core/secagg/shamir";
import { errorCode } from "../../helpers/errors";

/** Deterministic small PRNG for choosing subsets (not for secrets). */
function picker(seed: number): (n: number) => number {
  let s = seed | 0 || 1;
  return (n) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
}

function subset<T>(xs: readonly T[], k: number, pick: (n: number) => number): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = pick(i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a.slice(0, k);
}

test("GF(2^16) field axioms hold on samples, and the reduction polynomial is 0x1100B", () => {
  const pick = picker(7);
  const r = () => pick(65536);
  for (let i = 0; i < 2000; i++) {
    const a = r();
    const b = r();
    const c = r();
    assert.equal(gfMul(a, b), gfMul(b, a));
    assert.equal(gfMul(a, gfMul(b, c)), gfMul(gfMul(a, b), c));
    assert.equal(gfMul(a, gfAdd(b, c)), gfAdd(gfMul(a, b), gfMul(a, c)));
    assert.equal(gfMul(a, 1), a);
    assert.equal(gfMul(a, 0), 0);
    assert.equal(gfAdd(a, a), 0);
    if (a !== 0) assert.equal(gfMul(a, gfInv(a)), 1);
  }
  // x * x^15 = x^16 = x^12 + x^3 + x + 1
  assert.equal(gfMul(2, 0x8000), 0x100b);
  // Multiplication by x matches shift-and-reduce for every element.
  for (let a = 0; a < 65536; a++) {
    let e = a << 1;
    if (e & 0x10000) e ^= 0x1100b;
    if (gfMul(a, 2) !== e) assert.fail(`x * ${a}`);
  }
  assert.equal(
    errorCode(() => gfInv(0)),
    "E_SECAGG_SHARES",
  );
});

test("any t shares reconstruct the secret; t-1 shares give a different value", () => {
  const pick = picker(11);
  for (const [n, t] of [
    [5, 3],
    [10, 6],
    [14, 8],
    [3, 1],
    [4, 4],
  ]) {
    const secret = new Uint8Array(randomBytes(32));
    const xs = Array.from({ length: n }, (_, i) => i + 1);
    const shares = splitSecret(secret, xs, t);
    assert.equal(shares.length, n);
    for (const s of shares) assert.equal(s.byteLength, 34);
    assert.deepEqual(
      shares.map((s) => shareXOf(s)),
      xs,
    );
    for (let trial = 0; trial < 20; trial++) {
      const some = subset(shares, t, pick);
      assert.deepEqual(combineShares(some, t), secret, `n=${n} t=${t}`);
      // More than t shares: the first t are used, still right.
      assert.deepEqual(combineShares(subset(shares, n, pick), t), secret);
      if (t > 1) {
        const fewer = subset(shares, t - 1, pick);
        assert.notDeepEqual(combineShares(fewer, t - 1), secret, "t-1 shares must not reconstruct");
        assert.equal(
          errorCode(() => combineShares(fewer, t)),
          "E_SECAGG_SHARES",
        );
      }
    }
  }
});

test("t-1 shares are consistent with every secret (perfect secrecy, small check)", () => {
  // With t = 2, one share (x, y) of a one-word secret s is y = s + a x: for each s exactly one a fits, so the
  // share's distribution does not depend on s. Check that splitting two different secrets with coefficients
  // chosen to match gives the same share.
  const x = 5;
  const a1 = 0x1234;
  const s1 = 0x0042;
  const s2 = 0xbeef;
  const y = gfAdd(s1, gfMul(a1, x));
  const a2 = gfMul(gfAdd(y, s2), gfInv(x)); // the coefficient that makes s2 give the same share
  const fixed = (a: number) => () => new Uint8Array([a >>> 8, a & 0xff]);
  const sh1 = splitSecret(new Uint8Array([s1 >>> 8, s1 & 0xff]), [x, 6], 2, fixed(a1));
  const sh2 = splitSecret(new Uint8Array([s2 >>> 8, s2 & 0xff]), [x, 6], 2, fixed(a2));
  assert.deepEqual(sh1[0], sh2[0], "the same single share for two different secrets");
  assert.notDeepEqual(sh1[1], sh2[1]);
});

test("1000 shares (classic SecAgg at n = 1000) split and reconstruct", () => {
  const secret = new Uint8Array(randomBytes(32));
  const xs = Array.from({ length: 1000 }, (_, i) => i + 1);
  const shares = splitSecret(secret, xs, 500);
  const pick = picker(3);
  assert.deepEqual(combineShares(subset(shares, 500, pick), 500), secret);
  assert.deepEqual(combineShares(shares.slice(500), 500), secret);
  assert.notDeepEqual(combineShares(shares.slice(0, 499), 499), secret);
  // The largest x coordinate works too.
  const top = splitSecret(secret, [65535, 65534, 1], 2);
  assert.deepEqual(combineShares([top[0], top[1]], 2), secret);
});

test("malformed input is rejected with E_SECAGG_SHARES", () => {
  const secret = new Uint8Array(32).fill(9);
  const shares = splitSecret(secret, [1, 2, 3, 4], 3);
  const code = (fn: () => unknown) => errorCode(fn);
  assert.equal(
    code(() => splitSecret(new Uint8Array(31), [1, 2], 2)),
    "E_SECAGG_SHARES",
  );
  assert.equal(
    code(() => splitSecret(secret, [1, 1, 2], 2)),
    "E_SECAGG_SHARES",
  );
  assert.equal(
    code(() => splitSecret(secret, [0, 1, 2], 2)),
    "E_SECAGG_SHARES",
  );
  assert.equal(
    code(() => splitSecret(secret, [1, 65536], 2)),
    "E_SECAGG_SHARES",
  );
  assert.equal(
    code(() => splitSecret(secret, [1, 2], 3)),
    "E_SECAGG_SHARES",
  );
  assert.equal(
    code(() => combineShares([shares[0], shares[0], shares[1]], 3)),
    "E_SECAGG_SHARES",
  );
  assert.equal(
    code(() => combineShares([shares[0], shares[1], shares[2].subarray(0, 32)], 3)),
    "E_SECAGG_SHARES",
  );
  const zeroX = shares[2].slice();
  zeroX[0] = 0;
  zeroX[1] = 0;
  assert.equal(
    code(() => combineShares([shares[0], shares[1], zeroX], 3)),
    "E_SECAGG_SHARES",
  );
  assert.equal(
    code(() => combineShares(shares, 0)),
    "E_SECAGG_SHARES",
  );
  assert.equal(shareX(["a", "b", "c"], "c"), 3);
  assert.equal(
    code(() => shareX(["a", "b"], "z")),
    "E_SECAGG_SHARES",
  );
});
