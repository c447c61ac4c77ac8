/** Label-matched held-out samples of a shared pool (core/data/heldout.ts). */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { makeDataset } from "../../../core/data/dataset";
import { heldOutSample } from "../../../core/data/heldout";
import { errorCode } from "../../../core/errors";

const labelled = (labels: number[]) =>
  makeDataset(Float32Array.from(labels.map((_, i) => i)), Int32Array.from(labels), [1], 3);

test("the sample follows the device's label mix, without repeats, deterministically", () => {
  // Pool: 100 of each class 0, 1, 2; x = the sample's index.
  const pool = labelled(Array.from({ length: 300 }, (_, i) => i % 3));
  const device = labelled([0, 0, 0, 1]); // 75% class 0, 25% class 1, no class 2
  const s = heldOutSample(device, pool, 40, 7);
  assert.equal(s.n, 40);
  const counts = [0, 0, 0];
  for (const y of s.y) counts[y]++;
  assert.deepEqual(counts, [30, 10, 0]);
  assert.equal(new Set(s.x).size, 40);
  for (let i = 0; i < s.n; i++) assert.equal(pool.y[s.x[i]], s.y[i]);
  assert.deepEqual(heldOutSample(device, pool, 40, 7), s);
  assert.notDeepEqual([...heldOutSample(device, pool, 40, 8).x], [...s.x]);
});

test("sizes sum to the target by largest remainders; a class short in the pool gives what it has", () => {
  const pool = labelled([
    ...Array<number>(10).fill(0),
    ...Array<number>(2).fill(1),
    ...Array<number>(10).fill(2),
  ]);
  const device = labelled([0, 1, 2]);
  const s = heldOutSample(device, pool, 10, 1);
  const counts = [0, 0, 0];
  for (const y of s.y) counts[y]++;
  // 10/3 each: 4, 3, 3 by remainder order (ties: lower class first), class 1 capped at the pool's 2.
  assert.deepEqual(counts, [4, 2, 3]);
  // A device with no label the pool knows draws with the pool's mix.
  const other = heldOutSample(
    makeDataset(new Float32Array(2), Int32Array.from([9, 9]), [1], 10),
    pool,
    11,
    1,
  );
  assert.equal(other.n, 11);
  assert.throws(
    () => heldOutSample(device, pool, 0, 1),
    (e) => errorCode(e) === "E_CONFIG_VALUE",
  );
});
