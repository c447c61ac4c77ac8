import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { formatPartition, parsePartition, partition, type PartitionSpec } from "../../../core/data/partition";
import { errorCode as code } from "../../helpers/errors";

/** n labels of `classes` classes, in the order 0,1,..,K-1,0,1,.. with class sizes differing by at most one. */
function labels(n: number, classes: number): Int32Array {
  return Int32Array.from({ length: n }, (_, i) => i % classes);
}

/** MNIST-like unequal class sizes: class k has base + 7k samples, in a scrambled order. */
function unevenLabels(classes: number, base: number): Int32Array {
  const out: number[] = [];
  for (let k = 0; k < classes; k++) for (let j = 0; j < base + 7 * k; j++) out.push(k);
  // deterministic scramble (multiplicative step coprime with the length)
  const n = out.length;
  let step = 7919;
  while (gcd(step, n) !== 1) step++;
  return Int32Array.from({ length: n }, (_, i) => out[(i * step) % n]);
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

function assertDisjoint(parts: Int32Array[], n: number, exhaustive: boolean): void {
  const seen = new Uint8Array(n);
  let total = 0;
  for (const p of parts) {
    for (let i = 0; i < p.length; i++) {
      assert.ok(p[i] >= 0 && p[i] < n, `index ${p[i]} out of range`);
      assert.equal(seen[p[i]], 0, `index ${p[i]} given twice`);
      seen[p[i]] = 1;
      if (i > 0) assert.ok(p[i] > p[i - 1], "indices are ascending");
    }
    total += p.length;
  }
  if (exhaustive) assert.equal(total, n, "every index used exactly once");
}

function classCounts(labelsArr: Int32Array, idx: Int32Array, classes: number): number[] {
  const c = new Array<number>(classes).fill(0);
  for (const i of idx) c[labelsArr[i]]++;
  return c;
}

/** Mean over clients of the total-variation distance between the client's and the global label distribution. */
function meanTvDistance(labelsArr: Int32Array, parts: Int32Array[], classes: number): number {
  const global = classCounts(labelsArr, Int32Array.from(labelsArr.keys()), classes).map(
    (c) => c / labelsArr.length,
  );
  let sum = 0;
  for (const p of parts) {
    const local = classCounts(labelsArr, p, classes).map((c) => c / p.length);
    sum += 0.5 * local.reduce((a, q, k) => a + Math.abs(q - global[k]), 0);
  }
  return sum / parts.length;
}

test("parsePartition accepts the documented forms", () => {
  assert.deepEqual(parsePartition("iid"), { kind: "iid" });
  assert.deepEqual(parsePartition(" IID "), { kind: "iid" });
  assert.deepEqual(parsePartition("shards"), { kind: "shards", shardsPerClient: 2 });
  assert.deepEqual(parsePartition("shards:3"), { kind: "shards", shardsPerClient: 3 });
  assert.deepEqual(parsePartition("dirichlet:0.5"), { kind: "dirichlet", alpha: 0.5 });
  assert.deepEqual(parsePartition("dirichlet:100"), { kind: "dirichlet", alpha: 100 });
  assert.deepEqual(parsePartition("dirichlet:1e-2"), { kind: "dirichlet", alpha: 0.01 });
  for (const s of ["iid", "shards:2", "shards:5", "dirichlet:0.1", "dirichlet:10"]) {
    assert.equal(formatPartition(parsePartition(s)), s);
  }
});

test("parsePartition rejects bad specs with E_CONFIG_PARTITION", () => {
  for (const bad of [
    "",
    "random",
    "iid:2",
    "shards:0",
    "shards:-1",
    "shards:1.5",
    "shards:x",
    "shards:",
    "dirichlet",
    "dirichlet:",
    "dirichlet:0",
    "dirichlet:-0.5",
    "dirichlet:abc",
    "dirichlet:Infinity",
    "dirichlet:NaN",
  ]) {
    assert.equal(
      code(() => parsePartition(bad)),
      "E_CONFIG_PARTITION",
      bad,
    );
  }
});

test("iid covers every index exactly once, equal sizes, balanced labels", () => {
  const y = labels(8000, 10);
  const parts = partition(y, 100, { kind: "iid" }, 1);
  assert.equal(parts.length, 100);
  assertDisjoint(parts, y.length, true);
  for (const p of parts) assert.equal(p.length, 80);
  // Every label is present on most clients and no client is dominated by one label.
  for (const p of parts) {
    const counts = classCounts(y, p, 10);
    assert.ok(Math.max(...counts) <= 24, `a client has ${Math.max(...counts)} of 80 from one class`);
    assert.ok(counts.filter((c) => c > 0).length >= 7, "an iid client misses many classes");
  }
  assert.ok(meanTvDistance(y, parts, 10) < 0.2);
});

test("iid sizes differ by at most one when the split is uneven", () => {
  const y = labels(103, 3);
  const parts = partition(y, 10, { kind: "iid" }, 3);
  assertDisjoint(parts, 103, true);
  const sizes = parts.map((p) => p.length);
  assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1, `sizes ${sizes}`);
});

test("shards gives each client at most K labels, mostly exactly K", () => {
  const y = unevenLabels(10, 700); // class sizes 700..763
  for (const k of [1, 2, 3]) {
    const parts = partition(y, 100, { kind: "shards", shardsPerClient: k }, 11);
    assertDisjoint(parts, y.length, true);
    const distinct = parts.map((p) => classCounts(y, p, 10).filter((c) => c > 0).length);
    assert.ok(Math.max(...distinct) <= k, `shards:${k} gave a client ${Math.max(...distinct)} labels`);
    const exactlyK = distinct.filter((d) => d === k).length;
    assert.ok(exactlyK >= 60, `shards:${k}: only ${exactlyK} of 100 clients have ${k} labels`);
    // Shard sizes are close to equal, so client sizes are too.
    const sizes = parts.map((p) => p.length);
    const mean = y.length / 100;
    assert.ok(
      Math.min(...sizes) >= mean * 0.9 && Math.max(...sizes) <= mean * 1.1,
      `sizes ${Math.min(...sizes)}..${Math.max(...sizes)}`,
    );
  }
  const skew = meanTvDistance(y, partition(y, 100, { kind: "shards", shardsPerClient: 2 }, 11), 10);
  assert.ok(skew > 0.7, `shards skew ${skew}`);
});

test("shards with fewer shards than classes still covers everything", () => {
  const y = labels(60, 10);
  const parts = partition(y, 3, { kind: "shards", shardsPerClient: 2 }, 5);
  assertDisjoint(parts, 60, true);
  for (const p of parts) assert.equal(p.length, 20);
});

test("shards needs at least one sample per shard", () => {
  assert.equal(
    code(() => partition(labels(10, 2), 6, { kind: "shards", shardsPerClient: 2 }, 1)),
    "E_CONFIG_PARTITION",
  );
  const parts = partition(labels(12, 2), 6, { kind: "shards", shardsPerClient: 2 }, 1);
  assertDisjoint(parts, 12, true);
  for (const p of parts) assert.equal(p.length, 2);
});

test("dirichlet: small alpha is skewed, large alpha near uniform", () => {
  const y = labels(8000, 10);
  const skewOf = (alpha: number, seed: number) => {
    const parts = partition(y, 50, { kind: "dirichlet", alpha }, seed);
    assertDisjoint(parts, y.length, true);
    for (const p of parts) assert.ok(p.length >= 1, "every client has a sample");
    return meanTvDistance(y, parts, 10);
  };
  const small = skewOf(0.1, 1);
  const mid = skewOf(1, 1);
  const large = skewOf(1000, 1);
  assert.ok(small > 0.6, `alpha 0.1 skew ${small}`);
  assert.ok(mid > large && mid < small, `alpha 1 skew ${mid}`);
  assert.ok(large < 0.15, `alpha 1000 skew ${large}`);
  // Large alpha also gives near-equal client sizes; small alpha very unequal ones.
  const sizes = (alpha: number) => partition(y, 50, { kind: "dirichlet", alpha }, 2).map((p) => p.length);
  const big = sizes(1000);
  assert.ok(
    Math.min(...big) > 120 && Math.max(...big) < 200,
    `alpha 1000 sizes ${Math.min(...big)}..${Math.max(...big)}`,
  );
  const tiny = sizes(0.1);
  assert.ok(Math.max(...tiny) > 3 * Math.min(...tiny));
});

test("dirichlet gives every client a sample even with tiny alpha and many clients", () => {
  const y = labels(120, 4);
  for (const alpha of [0.001, 0.05]) {
    const parts = partition(y, 100, { kind: "dirichlet", alpha }, 9);
    assertDisjoint(parts, 120, true);
    for (const p of parts) assert.ok(p.length >= 1);
  }
  // As many clients as samples: exactly one each.
  const one = partition(labels(30, 3), 30, { kind: "dirichlet", alpha: 0.01 }, 4);
  for (const p of one) assert.equal(p.length, 1);
});

test("deterministic for a seed, different across seeds", () => {
  const y = unevenLabels(10, 300);
  const specs: PartitionSpec[] = [
    { kind: "iid" },
    { kind: "shards", shardsPerClient: 2 },
    { kind: "dirichlet", alpha: 0.5 },
  ];
  for (const spec of specs) {
    const a = partition(y, 20, spec, 123);
    const b = partition(y, 20, spec, 123);
    const c = partition(y, 20, spec, 124);
    assert.deepEqual(a, b, spec.kind);
    assert.notDeepEqual(a, c, spec.kind);
  }
});

test("samplesPerClient uses a subset of numClients x samplesPerClient samples", () => {
  const y = labels(10000, 10);
  const iid = partition(y, 100, { kind: "iid" }, 7, { samplesPerClient: 80 });
  assertDisjoint(iid, y.length, false);
  for (const p of iid) assert.equal(p.length, 80);
  const shards = partition(y, 100, { kind: "shards", shardsPerClient: 2 }, 7, { samplesPerClient: 80 });
  assertDisjoint(shards, y.length, false);
  assert.equal(
    shards.reduce((a, p) => a + p.length, 0),
    8000,
  );
  const dir = partition(y, 100, { kind: "dirichlet", alpha: 0.5 }, 7, { samplesPerClient: 80 });
  assertDisjoint(dir, y.length, false);
  assert.equal(
    dir.reduce((a, p) => a + p.length, 0),
    8000,
  );
  assert.equal(
    code(() => partition(y, 100, { kind: "iid" }, 7, { samplesPerClient: 101 })),
    "E_CONFIG_PARTITION",
  );
  assert.equal(
    code(() => partition(y, 100, { kind: "iid" }, 7, { samplesPerClient: 0 })),
    "E_CONFIG_PARTITION",
  );
});

test("more clients than samples, or a non-positive client count, is E_CONFIG_PARTITION", () => {
  for (const spec of [parsePartition("iid"), parsePartition("shards:1"), parsePartition("dirichlet:1")]) {
    assert.equal(
      code(() => partition(labels(5, 2), 6, spec, 1)),
      "E_CONFIG_PARTITION",
    );
    assert.equal(
      code(() => partition(labels(5, 2), 0, spec, 1)),
      "E_CONFIG_PARTITION",
    );
    assert.equal(
      code(() => partition(labels(5, 2), 2.5, spec, 1)),
      "E_CONFIG_PARTITION",
    );
  }
  const parts = partition(labels(5, 2), 5, { kind: "iid" }, 1);
  assertDisjoint(parts, 5, true);
});
