import { jest, test } from "@jest/globals";
import assert from "node:assert/strict";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { loadMnist, MNIST_TEST_PER_CLASS } from "../../../core/data/mnist";
import type { Dataset } from "../../../core/data/dataset";

function counts(ds: Dataset): number[] {
  const c = new Array<number>(ds.numClasses).fill(0);
  for (const v of ds.y) c[v]++;
  return c;
}

function digest(ds: Dataset): string {
  return crypto
    .createHash("sha256")
    .update(new Uint8Array(ds.x.buffer, ds.x.byteOffset, ds.x.byteLength))
    .update(new Uint8Array(ds.y.buffer, ds.y.byteOffset, ds.y.byteLength))
    .digest("hex");
}

test("fixed split: 8,000 train and 2,000 test digits of shape [784], 10 classes", () => {
  const { train, test: held } = loadMnist();
  assert.equal(train.n, 8000);
  assert.equal(held.n, 2000);
  for (const ds of [train, held]) {
    assert.deepEqual(ds.inputShape, [784]);
    assert.equal(ds.numClasses, 10);
    assert.equal(ds.x.length, ds.n * 784);
    assert.deepEqual(ds.classNames, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
  }
  // The package's per-class counts minus 200 held out of each.
  assert.deepEqual(counts(held), new Array(10).fill(MNIST_TEST_PER_CLASS));
  assert.deepEqual(counts(train), [801, 927, 791, 832, 780, 663, 814, 870, 744, 778]);
});

test("pixels are float32 in [0, 1] and look like digits", () => {
  const { train, test: held } = loadMnist();
  for (const ds of [train, held]) {
    let min = Infinity;
    let max = -Infinity;
    let sum = 0;
    for (const v of ds.x) {
      if (v < min) min = v;
      if (v > max) max = v;
      sum += v;
    }
    assert.equal(min, 0);
    assert.equal(max, 1);
    const mean = sum / ds.x.length;
    assert.ok(mean > 0.08 && mean < 0.2, `mean pixel ${mean}`); // MNIST's mean intensity is about 0.13
  }
  // Every digit has ink, and the border rows are (almost) blank.
  for (let i = 0; i < train.n; i += 97) {
    const img = train.x.subarray(i * 784, (i + 1) * 784);
    assert.ok(img.reduce((a, v) => a + v, 0) > 10, `digit ${i} is blank`);
    assert.ok(img.subarray(0, 28).reduce((a, v) => a + v, 0) < 1, `digit ${i} has ink in its top row`);
  }
});

test("train and test are disjoint and the order is class-mixed", () => {
  const { train, test: held } = loadMnist();
  const key = (ds: Dataset, i: number) =>
    crypto
      .createHash("sha1")
      .update(new Uint8Array(ds.x.buffer, ds.x.byteOffset + i * 784 * 4, 784 * 4))
      .digest("hex");
  const trainKeys = new Set(Array.from({ length: train.n }, (_, i) => key(train, i)));
  let shared = 0;
  for (let i = 0; i < held.n; i++) if (trainKeys.has(key(held, i))) shared++;
  assert.equal(shared, 0, `${shared} test digits also appear in train`);
  // Any prefix of the training set holds all classes.
  assert.equal(new Set(train.y.subarray(0, 100)).size, 10);
  assert.equal(new Set(held.y.subarray(0, 100)).size, 10);
});

test("the test digits are the documented ones: positions floor((i + 0.5) * n / 200) of each class file", () => {
  const { train, test: held } = loadMnist();
  const dir = path.join(path.dirname(require.resolve("mnist/package.json")), "src", "digits");
  const key = (px: ArrayLike<number>) => Array.from(px, (v) => Math.round(v * 1000)).join(",");
  const keys = (ds: Dataset) =>
    new Set(Array.from({ length: ds.n }, (_, i) => key(ds.x.subarray(i * 784, (i + 1) * 784))));
  const heldKeys = keys(held);
  const trainKeys = keys(train);
  for (const d of [0, 5, 9]) {
    const data = (JSON.parse(fs.readFileSync(path.join(dir, `${d}.json`), "utf8")) as { data: number[] })
      .data;
    const n = data.length / 784;
    const testPositions = new Set(
      Array.from({ length: MNIST_TEST_PER_CLASS }, (_, i) =>
        Math.floor(((i + 0.5) * n) / MNIST_TEST_PER_CLASS),
      ),
    );
    for (const j of [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, n - 3, n - 2, n - 1]) {
      const k = key(data.slice(j * 784, (j + 1) * 784));
      if (testPositions.has(j)) assert.ok(heldKeys.has(k), `digit ${d} #${j} should be in the test set`);
      else assert.ok(trainKeys.has(k), `digit ${d} #${j} should be in the training set`);
    }
  }
});

test("deterministic: cached per process, identical content on every load", () => {
  const a = loadMnist();
  const b = loadMnist();
  assert.equal(a, b);
  // A fresh module instance (jest's module registry, not require.cache) re-reads the files: the same bytes.
  let fresh: ReturnType<typeof loadMnist> | undefined;
  jest.isolateModules(() => {
    fresh = (require("../../../core/data/mnist") as typeof import("../../../core/data/mnist")).loadMnist();
  });
  assert.ok(fresh);
  assert.notEqual(fresh, a);
  assert.equal(digest(fresh.train), digest(a.train));
  assert.equal(digest(fresh.test), digest(a.test));
});
