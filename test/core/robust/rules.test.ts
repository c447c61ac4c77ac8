import { test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  boundNorms,
  centeredClip,
  coordinateMedian,
  flTrust,
  geometricMedian,
  l2Norm,
  multiKrum,
  pairwiseSquaredDistances,
  trimmedMean,
  weightedMean,
  type RobustInput,
} from "../../../core/robust/rules";

/** `honest` updates near `center` (seeded jitter) and `bad` updates at `attack`. */
function round(honest: number, bad: number, center: number[], attack: number[]): RobustInput[] {
  let s = 7;
  const rand = (): number => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5) * 0.2;
  const out: RobustInput[] = [];
  for (let k = 0; k < honest; k++)
    out.push({ deviceId: `h${k}`, delta: Float32Array.from(center, (c) => c + rand()), weight: 10 });
  for (let k = 0; k < bad; k++) out.push({ deviceId: `b${k}`, delta: Float32Array.from(attack), weight: 10 });
  return out;
}

const near = (a: Float32Array, b: number[], tol: number): boolean =>
  a.every((v, i) => Math.abs(v - b[i]!) <= tol);

test("the mean follows one large attacker; every robust rule stays near the honest centre", () => {
  const center = [1, -2, 0.5];
  const inputs = round(8, 2, center, [1000, 1000, -1000]);
  assert.ok(!near(weightedMean(inputs).delta, center, 1), "the plain mean is dragged away");
  assert.ok(near(coordinateMedian(inputs).delta, center, 0.2));
  assert.ok(near(trimmedMean(inputs, 2).delta, center, 0.2));
  assert.ok(near(geometricMedian(inputs).delta, center, 0.3));
  const krum = multiKrum(inputs, 2, 3);
  assert.ok(near(krum.delta, center, 0.2));
  assert.deepEqual(
    krum.dropped.filter((d) => d.deviceId.startsWith("b")).map((d) => d.deviceId),
    ["b0", "b1"],
  );
  assert.equal(krum.kept.length, 3);
  // Centered clipping from zero: each step moves an update's pull by at most τ, so the two attackers (at norm
  // ~1700) shift the result by at most 2τ/10 per iteration while the eight honest ones pull it to the centre.
  const cc = centeredClip(inputs, 5, { iterations: 10 });
  assert.ok(l2Norm(Float32Array.from(cc.delta, (v, i) => v - center[i]!)) < 2.5);
});

test("the exact values: median of odd and even counts, trimmed mean, weighted mean", () => {
  const inputs: RobustInput[] = [1, 5, 2, 9].map((v, k) => ({
    deviceId: `d${k}`,
    delta: Float32Array.of(v),
    weight: k + 1,
  }));
  assert.equal(coordinateMedian(inputs).delta[0], 3.5);
  assert.equal(coordinateMedian(inputs.slice(0, 3)).delta[0], 2);
  assert.equal(trimmedMean(inputs, 1).delta[0], 3.5);
  assert.equal(trimmedMean(inputs, 0).delta[0], 17 / 4);
  assert.ok(Math.abs(weightedMean(inputs).delta[0]! - (1 + 10 + 6 + 36) / 10) < 1e-6);
});

test("the geometric median of points on a line is their median, and Weiszfeld converges", () => {
  const inputs: RobustInput[] = [0, 1, 2, 3, 100].map((v, k) => ({
    deviceId: `d${k}`,
    delta: Float32Array.of(v, 0),
    weight: 1,
  }));
  const g = geometricMedian(inputs, { maxIter: 500, tol: 1e-9 });
  assert.ok(Math.abs(g.delta[0]! - 2) < 1e-3, `geomed ${g.delta[0]}`);
  assert.ok(g.iterations < 500);
});

test("norm bounding: fixed and quantile bounds scale only the long updates", () => {
  const inputs: RobustInput[] = [1, 2, 3, 40].map((v, k) => ({
    deviceId: `d${k}`,
    delta: Float32Array.of(v, 0),
    weight: 1,
  }));
  const fixed = boundNorms(inputs, { fixed: 2.5 });
  assert.deepEqual(fixed.clipped, ["d2", "d3"]);
  assert.deepEqual(Array.from(fixed.inputs.map((u) => u.delta[0])), [1, 2, 2.5, 2.5]);
  const median = boundNorms(inputs, { quantile: 0.5 });
  assert.equal(median.bound, 2);
  assert.deepEqual(median.clipped, ["d2", "d3"]);
});

test("bad parameters and shapes are coded errors", () => {
  const inputs = round(3, 0, [0, 0], [0, 0]);
  assert.throws(() => trimmedMean(inputs, 2), { code: "E_STRATEGY_SIZE" });
  assert.throws(() => multiKrum(inputs, 1), { code: "E_STRATEGY_SIZE" });
  assert.throws(() => coordinateMedian([]), { code: "E_STRATEGY_SIZE" });
  assert.throws(
    () => coordinateMedian([...inputs, { deviceId: "x", delta: new Float32Array(3), weight: 1 }]),
    { code: "E_STRATEGY_SIZE" },
  );
  assert.throws(() => centeredClip(inputs, 0), { code: "E_STRATEGY_SIZE" });
  assert.throws(() => boundNorms(inputs, { quantile: 0 }), { code: "E_STRATEGY_SIZE" });
});

test("median and trimmed mean (selection, not sorting) equal a sort-based reference, ties included", () => {
  let s = 11;
  const rand = (): number => (s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (const n of [1, 2, 3, 4, 5, 10, 21, 64]) {
    const d = 50;
    // Values from a small set, so coordinates have many ties.
    const inputs: RobustInput[] = Array.from({ length: n }, (_, k) => ({
      deviceId: `d${k}`,
      delta: Float32Array.from({ length: d }, () => Math.floor(rand() * 7) - 3 + (rand() < 0.1 ? 0.5 : 0)),
      weight: 1,
    }));
    const column = (i: number): number[] => inputs.map((u) => u.delta[i]!).sort((a, b) => a - b);
    const median = coordinateMedian(inputs).delta;
    for (let i = 0; i < d; i++) {
      const c = column(i);
      const want = n % 2 ? c[n >> 1]! : (c[(n >> 1) - 1]! + c[n >> 1]!) / 2;
      assert.equal(median[i], Math.fround(want), `median n=${n} i=${i}`);
    }
    for (let b = 0; 2 * b < n; b++) {
      const trimmed = trimmedMean(inputs, b).delta;
      for (let i = 0; i < d; i++) {
        const kept = column(i).slice(b, n - b);
        const want = kept.reduce((x, y) => x + y, 0) / kept.length;
        assert.ok(
          Math.abs(trimmed[i]! - want) < 1e-5,
          `trimmed n=${n} b=${b} i=${i}: ${trimmed[i]} vs ${want}`,
        );
      }
    }
  }
});

test("FLTrust by hand (Cao et al. 2021, Algorithm 1): ReLU-cosine trust, each update rescaled to the root's norm", () => {
  const u = (id: string, ...v: number[]): RobustInput => ({
    deviceId: id,
    delta: Float32Array.from(v),
    weight: 99,
  });
  const root = Float32Array.of(2, 0);
  const r = flTrust(
    [u("same", 4, 0), u("orthogonal", 0, 3), u("diagonal", 1, 1), u("against", -1, 0.1)],
    root,
  );
  const c = Math.SQRT1_2;
  // same: trust 1, rescaled to (2, 0); diagonal: trust 1/√2, rescaled to (√2, √2); the others trust 0.
  assert.deepEqual(
    r.scores.map((x) => Math.round(x * 1e6) / 1e6),
    [1, 0, Math.round(c * 1e6) / 1e6, 0],
  );
  const want = [(2 + c * Math.SQRT2) / (1 + c), (c * Math.SQRT2) / (1 + c)];
  assert.ok(near(r.delta, want, 1e-6), `${Array.from(r.delta)} vs ${want}`);
  assert.deepEqual(r.kept, ["same", "diagonal"]);
  assert.deepEqual(
    r.dropped.map((d) => d.deviceId),
    ["orthogonal", "against"],
  );
  // The weights (sample counts) do not enter: FLTrust weighs by trust only.
  const light = flTrust([{ ...u("same", 4, 0), weight: 1 }, u("diagonal", 1, 1)], root);
  const heavy = flTrust([u("same", 4, 0), { ...u("diagonal", 1, 1), weight: 1e6 }], root);
  assert.deepEqual(Array.from(light.delta), Array.from(heavy.delta));
  // Nobody trusted: a zero aggregate; a zero root trusts nobody; a zero update is dropped, not divided by.
  assert.deepEqual(Array.from(flTrust([u("against", -1, 0)], root).delta), [0, 0]);
  assert.deepEqual(flTrust([u("same", 4, 0)], new Float32Array(2)).kept, []);
  assert.deepEqual(flTrust([u("zero", 0, 0), u("same", 4, 0)], root).kept, ["same"]);
  assert.throws(() => flTrust([u("same", 4, 0)], Float32Array.of(1)), { code: "E_STRATEGY_SIZE" });
});

test("blocked pairwise distances equal the naive loop's (to float64 rounding), and Krum picks the same updates", () => {
  let s = 5;
  const rand = (): number => (s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5;
  const naive = (a: Float32Array, b: Float32Array): number => {
    let t = 0;
    for (let i = 0; i < a.length; i++) t += (a[i]! - b[i]!) ** 2;
    return t;
  };
  // Sizes around the block (1024 coordinates) and the four-wide register blocking (n mod 4).
  for (const [n, d] of [
    [1, 10],
    [2, 1],
    [3, 1023],
    [5, 1024],
    [6, 1025],
    [9, 3000],
    [12, 2049],
  ] as const) {
    const vs = Array.from({ length: n }, () => Float32Array.from({ length: d }, () => rand() * 10));
    const got = pairwiseSquaredDistances(vs);
    for (let a = 0; a < n; a++)
      for (let b = 0; b < n; b++) {
        const want = a === b ? 0 : naive(vs[a]!, vs[b]!);
        assert.ok(
          Math.abs(got[a * n + b]! - want) <= 1e-12 * Math.max(1, want),
          `n=${n} d=${d} (${a}, ${b})`,
        );
        assert.equal(got[a * n + b], got[b * n + a]);
      }
  }
  assert.throws(() => pairwiseSquaredDistances([new Float32Array(2), new Float32Array(3)]), {
    code: "E_STRATEGY_SIZE",
  });
  // Krum on the blocked distances chooses what a naive Krum chooses.
  const inputs = round(
    15,
    3,
    Array.from({ length: 2500 }, (_, i) => Math.sin(i)),
    Array(2500).fill(3),
  );
  for (const u of inputs) for (let i = 0; i < u.delta.length; i++) u.delta[i]! += rand();
  const f = 3;
  const scores = inputs.map((u, a) =>
    inputs
      .filter((_, b) => b !== a)
      .map((v) => naive(u.delta, v.delta))
      .sort((x, y) => x - y)
      .slice(0, inputs.length - f - 2)
      .reduce((x, y) => x + y, 0),
  );
  const best = scores
    .map((sc, k) => [sc, k] as const)
    .sort((x, y) => x[0] - y[0] || x[1] - y[1])
    .slice(0, 5)
    .map(([, k]) => inputs[k]!.deviceId);
  assert.deepEqual(
    multiKrum(inputs, f, 5).kept,
    [...best].sort(
      (x, y) => inputs.findIndex((u) => u.deviceId === x) - inputs.findIndex((u) => u.deviceId === y),
    ),
  );
});
