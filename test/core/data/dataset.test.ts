import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { concat, makeDataset, reshape, subset, type Dataset } from "../../../core/data/dataset";
import { parsePartition, partitionDataset } from "../../../core/data/partition";
import { errorCode as code } from "../../helpers/errors";

/** A regression dataset of n samples [2] with targets [2]: sample i is [i, -i], its targets [10 i, 100 i]. */
function regression(n: number, from = 0): Dataset {
  const x = Float32Array.from({ length: 2 * n }, (_, j) => (j % 2 === 0 ? 1 : -1) * (from + (j >> 1)));
  const targets = Float32Array.from(
    { length: 2 * n },
    (_, j) => (j % 2 === 0 ? 10 : 100) * (from + (j >> 1)),
  );
  return makeDataset(x, new Int32Array(n), [2], 1, undefined, { targets, targetSize: 2, task: "regression" });
}

/** Every sample of `ds` still has the targets that belong to its features. */
function assertAligned(ds: Dataset): void {
  assert.equal(ds.targetSize, 2);
  assert.equal(ds.targets?.length, ds.n * 2);
  for (let i = 0; i < ds.n; i++) {
    const id = ds.x[2 * i];
    assert.deepEqual([ds.targets?.[2 * i], ds.targets?.[2 * i + 1]], [10 * id, 100 * id]);
  }
}

test("makeDataset checks targets against the samples", () => {
  const ds = regression(3);
  assert.equal(ds.task, "regression");
  assert.equal(
    code(() => makeDataset(ds.x, ds.y, [2], 1, undefined, { targets: ds.targets })),
    "E_DATA_SHAPE",
  );
  assert.equal(
    code(() => makeDataset(ds.x, ds.y, [2], 1, undefined, { targets: new Float32Array(5), targetSize: 2 })),
    "E_DATA_SHAPE",
  );
  // No extras: no such keys at all (as before).
  assert.ok(!("targets" in makeDataset(ds.x, ds.y, [2], 1)));
});

test("subset, reshape and concat carry the targets with their samples", () => {
  const ds = regression(6);
  const sub = subset(ds, [4, 1, 3]);
  assert.deepEqual(Array.from(sub.targets as Float32Array), [40, 400, 10, 100, 30, 300]);
  assertAligned(sub);
  assert.equal(sub.task, "regression");
  const flat = reshape(sub, [2, 1]);
  assert.equal(flat.targets, sub.targets);
  const both = concat([regression(2), regression(3, 2)]);
  assert.equal(both.n, 5);
  assertAligned(both);
  assert.deepEqual(Array.from(both.targets as Float32Array).slice(-2), [40, 400]);
  // Classifiers stay without targets; mixing the two is refused.
  const cls = makeDataset(new Float32Array(4), new Int32Array([0, 1]), [2], 2);
  assert.ok(!("targets" in subset(cls, [1])));
  assert.ok(!("targets" in concat([cls, cls])));
  assert.equal(
    code(() => concat([cls, ds])),
    "E_DATA_SHAPE",
  );
  assert.equal(
    code(() => concat([cls, makeDataset(new Float32Array(4), new Int32Array(1), [4], 2)])),
    "E_DATA_SHAPE",
  );
  assert.equal(
    code(() => concat([])),
    "E_DATA_SHAPE",
  );
});

test("partitionDataset: every client's samples keep their targets, for every partitioner", () => {
  const ds = regression(60);
  for (const spec of ["iid", "shards:2", "dirichlet:0.5"]) {
    const parts = partitionDataset(ds, 5, parsePartition(spec), 3);
    assert.equal(parts.length, 5);
    assert.equal(
      parts.reduce((a, p) => a + p.n, 0),
      60,
      spec,
    );
    const seen = new Set<number>();
    for (const p of parts) {
      assertAligned(p);
      for (let i = 0; i < p.n; i++) seen.add(p.x[2 * i]);
    }
    assert.equal(seen.size, 60, spec);
  }
});
