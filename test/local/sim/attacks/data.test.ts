/** Data poisoning (local/sim/attacks/data.ts): label flip, the backdoor trigger, and the backdoor success rate. */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { makeDataset, type Dataset } from "../../../../core/data/dataset";
import type { ModelSpec } from "../../../../core/engine/model-spec";
import { simAttack } from "../../../../local/sim/attacks";
import {
  backdoorSuccess,
  backdoorTrigger,
  checkDataAttack,
  poisonDataset,
  poisonFleet,
  stampTrigger,
  triggeredTestSet,
} from "../../../../local/sim/attacks/data";
import { parseAttack } from "../../../../local/sim/attacks/spec";

/** n samples of `size` values (sample i is all i/100), labels i mod C. */
function toy(n: number, shape: number[], C: number): Dataset {
  const size = shape.reduce((a, b) => a * b, 1);
  const x = new Float32Array(n * size);
  for (let i = 0; i < n; i++) x.fill(i / 100, i * size, (i + 1) * size);
  return makeDataset(
    x,
    Int32Array.from({ length: n }, (_, i) => i % C),
    shape,
    C,
  );
}

const mlp = (C: number): ModelSpec =>
  ({ kind: "mlp", inputShape: [784], numClasses: C, hidden: [4] }) as ModelSpec;

test("label flip maps y to C-1-y, or every label to the given class, on a copy", () => {
  const d = toy(6, [2], 3);
  const flipped = poisonDataset(d, { spec: parseAttack("label-flip:0.2") }, { seed: 1, device: 0 });
  assert.deepEqual(Array.from(d.y), [0, 1, 2, 0, 1, 2], "the input is unchanged");
  assert.deepEqual(Array.from(flipped.y), [2, 1, 0, 2, 1, 0]);
  assert.equal(flipped.x, d.x, "inputs are untouched");
  const fixed = poisonDataset(d, { spec: parseAttack("label-flip:0.2:1") }, { seed: 1, device: 0 });
  assert.deepEqual(Array.from(fixed.y), [1, 1, 1, 1, 1, 1]);
});

test("the MNIST trigger is a 4x4 white square in the bottom-right corner", () => {
  const t = backdoorTrigger("mnist", toy(2, [28, 28, 1], 10));
  const expected: number[] = [];
  for (let r = 23; r <= 26; r++) for (let c = 23; c <= 26; c++) expected.push(r * 28 + c);
  assert.deepEqual(Array.from(t.index), expected);
  assert.ok(t.value.every((v) => v === 1));
  const x = new Float32Array(2 * 784);
  stampTrigger(x, 1, 784, t);
  assert.equal(
    x.subarray(0, 784).reduce((a, b) => a + b, 0),
    0,
    "sample 0 untouched",
  );
  assert.equal(x[784 + 26 * 28 + 26], 1);
  assert.equal(x[784 + 27 * 28 + 27], 0, "one pixel in from the edge");
  assert.equal(
    x.subarray(784).reduce((a, b) => a + b, 0),
    16,
  );
});

test("the sensors trigger is ±3 standard deviations on channel 0 of the last four time steps", () => {
  const test0 = makeDataset(
    Float32Array.from({ length: 2 * 32 * 6 }, (_, i) => (i % 2 ? 2 : -2)),
    Int32Array.of(0, 1),
    [32, 6],
    5,
  );
  const t = backdoorTrigger("sensors", test0);
  assert.deepEqual(Array.from(t.index), [28 * 6, 29 * 6, 30 * 6, 31 * 6]);
  // The test set's values are ±2: standard deviation 2.
  assert.deepEqual(Array.from(t.value), [6, -6, 6, -6]);
  const flat = backdoorTrigger("dir:x", toy(3, [10], 2));
  assert.deepEqual(Array.from(flat.index), [6, 7, 8, 9]);
});

test("the backdoor stamps and relabels a seeded fraction of the attacker's samples", () => {
  const d = toy(10, [28, 28, 1], 10);
  const t = backdoorTrigger("mnist", d);
  const a = { spec: parseAttack("backdoor:0.2:0.3") };
  const p = poisonDataset(d, a, { seed: 5, device: 3, trigger: t });
  const stamped = [...Array(10).keys()].filter((i) => p.x[i * 784 + t.index[0]!] === 1);
  assert.equal(stamped.length, 3, "⌈0.3·10⌉ samples");
  for (let i = 0; i < 10; i++) {
    if (stamped.includes(i)) assert.equal(p.y[i], 0, "relabelled to the target");
    else {
      assert.equal(p.y[i], d.y[i]);
      assert.deepEqual(p.x.subarray(i * 784, (i + 1) * 784), d.x.subarray(i * 784, (i + 1) * 784));
    }
  }
  assert.deepEqual(p, poisonDataset(d, a, { seed: 5, device: 3, trigger: t }), "deterministic");
  assert.notDeepEqual(p.x, poisonDataset(d, a, { seed: 5, device: 4, trigger: t }).x, "per device");
  assert.equal(d.x[t.index[0]!], 0, "the input is unchanged");
});

test("poisonFleet changes only the attackers' datasets, and refuses a non-classifier", () => {
  const devices = Array.from({ length: 5 }, () => toy(4, [784], 10));
  const data = { devices, test: toy(20, [784], 10), spec: mlp(10) };
  const attack = simAttack({ attack: "label-flip:0.4", devices: 5, seed: 3 })!;
  const out = poisonFleet(data, attack, { dataset: "mnist", seed: 3 });
  for (let i = 0; i < 5; i++) {
    if (attack.indices.includes(i)) assert.deepEqual(Array.from(out.devices[i]!.y), [9, 8, 7, 6]);
    else assert.equal(out.devices[i], devices[i]);
  }
  const model = simAttack({ attack: "sign-flip:0.4", devices: 5, seed: 3 })!;
  assert.equal(poisonFleet(data, model, { dataset: "mnist", seed: 3 }), data);
  assert.throws(
    () => checkDataAttack("backdoor", undefined, { ...mlp(10), kind: "autoencoder" } as ModelSpec, data.test),
    { code: "E_CONFIG_ATTACK" },
  );
  assert.throws(() => checkDataAttack("label-flip", 10, mlp(10), data.test), { code: "E_CONFIG_ATTACK" });
});

test("the backdoor success rate: triggered non-target test samples classified as the target", () => {
  // 3 classes, samples of 4 values; the trigger writes 9 at index 3.
  const t = { index: Int32Array.of(3), value: Float32Array.of(9) };
  const x = Float32Array.from([
    ...[0, 0, 0, 0], // class 0: left out (the target)
    ...[1, 0, 0, 0], // class 1
    ...[2, 0, 0, 0], // class 2
    ...[5, 0, 0, 0], // class 1
    ...[0, 0, 0, 0], // class 2
  ]);
  const test0 = makeDataset(x, Int32Array.of(0, 1, 2, 1, 2), [4], 3);
  const trig = triggeredTestSet(test0, t);
  assert.equal(trig.n, 4);
  assert.deepEqual(Array.from(trig.x.subarray(0, 4)), [1, 0, 0, 9]);
  // A tiny model: the target wins when x3 > x0 + 2 (the backdoor works on samples with x0 < 7), else class 1.
  const model = {
    predict(xs: Float32Array, n: number): Float32Array {
      const p = new Float32Array(n * 3);
      for (let i = 0; i < n; i++) {
        const s = xs[i * 4 + 3]! - xs[i * 4]! - 2;
        p[i * 3] = s;
        p[i * 3 + 1] = 0;
        p[i * 3 + 2] = -1;
      }
      return p;
    },
  };
  // x0 = 1, 2, 5, 0 with x3 = 9: scores 6, 5, 2, 7 > 0: all four hit.
  assert.equal(backdoorSuccess(model, trig, 3), 1);
  const shifted = { x: trig.x.map((v, i) => (i % 4 === 0 ? v + 4 : v)), n: 4 };
  // x0 = 5, 6, 9, 4: scores 2, 1, -2, 3: three of four.
  assert.equal(backdoorSuccess(model, shifted, 3), 0.75);
  assert.equal(backdoorSuccess(model, { x: new Float32Array(0), n: 0 }, 3), 0);
});
