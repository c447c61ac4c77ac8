import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { initBackend } from "../../../core/engine/backend";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { initialWeights, modelLayout } from "../../../core/engine/models";
import { FlotillaError } from "../../../core/errors";
import { weightsHash } from "../../../core/tensor/layout";
import { InProcessTrainExecutor } from "../../../modules/trainer/src/executor";
import { parseRoundOrder } from "../../../modules/trainer/src/round";

const SPEC: ModelSpec = { kind: "mlp", inputShape: [4], numClasses: 3, hidden: [5] } as ModelSpec;

function order(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    jobId: "job-1",
    round: 2,
    modelUrl: "http://127.0.0.1/m.f32",
    modelSha256: "a".repeat(64),
    layoutHash: modelLayout(SPEC).hash,
    modelSpec: SPEC,
    config: { epochs: 1, batchSize: 8, lr: 0.1, seed: 3 },
    deadline: 0,
    ...over,
  };
}

test("round order: `dp` is parsed (absent/null = none; clip, noise std, optional clip-bit noise)", () => {
  assert.equal(parseRoundOrder(order())?.dp, undefined);
  assert.equal(parseRoundOrder(order({ dp: null }))?.dp, undefined);
  assert.deepEqual(parseRoundOrder(order({ dp: { clip: 0.5, noiseStd: 0 } }))?.dp, {
    clip: 0.5,
    noiseStd: 0,
  });
  assert.deepEqual(parseRoundOrder(order({ dp: { clip: 1, noiseStd: 0.3, clipBitNoiseStd: 0.1 } }))?.dp, {
    clip: 1,
    noiseStd: 0.3,
    clipBitNoiseStd: 0.1,
  });
  // The cloud's twin patches set absent members to null.
  assert.deepEqual(parseRoundOrder(order({ dp: { clip: 1, noiseStd: 0, clipBitNoiseStd: null } }))?.dp, {
    clip: 1,
    noiseStd: 0,
  });
});

test("round order: a bad `dp` is refused with E_ROUND_INVALID naming the field", () => {
  const bad: [unknown, RegExp][] = [
    [7, /dp must be an object/],
    [[1], /dp must be an object/],
    [{ noiseStd: 0 }, /dp\.clip/],
    [{ clip: 0, noiseStd: 0 }, /dp\.clip/],
    [{ clip: -1, noiseStd: 0 }, /dp\.clip/],
    [{ clip: "1", noiseStd: 0 }, /dp\.clip/],
    [{ clip: Infinity, noiseStd: 0 }, /dp\.clip/],
    [{ clip: 1 }, /dp\.noiseStd/],
    [{ clip: 1, noiseStd: -0.1 }, /dp\.noiseStd/],
    [{ clip: 1, noiseStd: NaN }, /dp\.noiseStd/],
    [{ clip: 1, noiseStd: 0, clipBitNoiseStd: -1 }, /dp\.clipBitNoiseStd/],
    [{ clip: 1, noiseStd: 0, clipBitNoiseStd: "x" }, /dp\.clipBitNoiseStd/],
    [{ clip: 1, noiseStd: 0, epsilon: 3 }, /dp\.epsilon is unknown/],
  ];
  for (const [dp, msg] of bad) {
    assert.throws(
      () => parseRoundOrder(order({ dp })),
      (e: unknown) => e instanceof FlotillaError && e.code === "E_ROUND_INVALID" && msg.test(e.message),
      JSON.stringify(dp),
    );
  }
});

test("the executor honours the order's dp: the delta is clipped and the clip indicator reported", async () => {
  await initBackend();
  const n = 40;
  const x = new Float32Array(n * 4);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    y[i] = i % 3;
    for (let j = 0; j < 4; j++) x[i * 4 + j] = (y[i] === j ? 2 : 0) + ((i * 7 + j * 3) % 5) / 10;
  }
  const weights = initialWeights(SPEC, 1);
  const job = {
    jobId: "job-1",
    round: 1,
    deviceId: "dev-a",
    spec: SPEC,
    weights,
    modelSha256: weightsHash(weights),
    layoutHash: modelLayout(SPEC).hash,
    config: { epochs: 2, batchSize: 8, lr: 0.5, seed: 3 },
    data: { kind: "dataset" as const, dataset: { x, y, n, inputShape: [4], numClasses: 3 } },
  };
  const ex = new InProcessTrainExecutor();
  const plain = await ex.run(job, new AbortController().signal, () => {});
  const norm = (d: Float32Array) => Math.hypot(...d);
  assert.ok(norm(plain.delta) > 0.01, `plain delta norm ${norm(plain.delta)}`);
  assert.equal(plain.dpClipBit, undefined);
  const clip = norm(plain.delta) / 4;
  const dp = await ex.run(
    { ...job, dp: { clip, noiseStd: 0, clipBitNoiseStd: 0 } },
    new AbortController().signal,
    () => {},
  );
  assert.ok(Math.abs(norm(dp.delta) - clip) < 1e-5, `clipped to ${norm(dp.delta)}, clip ${clip}`);
  assert.equal(dp.dpClipBit, -0.5, "the update was clipped: b − ½ = −½");
});

test("round order: `normBound` (secure norm:C+mean jobs) is parsed; a bad one is refused with E_ROUND_INVALID", () => {
  assert.equal(parseRoundOrder(order())?.normBound, undefined);
  assert.equal(parseRoundOrder(order({ normBound: null }))?.normBound, undefined);
  assert.equal(parseRoundOrder(order({ normBound: 2.5 }))?.normBound, 2.5);
  for (const normBound of [0, -1, "2", Infinity, {}])
    assert.throws(
      () => parseRoundOrder(order({ normBound })),
      (e: unknown) =>
        e instanceof FlotillaError && e.code === "E_ROUND_INVALID" && /normBound/.test(e.message),
      JSON.stringify(normBound),
    );
});

test("the executor honours the order's normBound: the update leaves the device scaled to it (same direction)", async () => {
  await initBackend();
  const n = 40;
  const x = new Float32Array(n * 4);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    y[i] = i % 3;
    for (let j = 0; j < 4; j++) x[i * 4 + j] = (y[i] === j ? 2 : 0) + ((i * 7 + j * 3) % 5) / 10;
  }
  const weights = initialWeights(SPEC, 1);
  const job = {
    jobId: "job-1",
    round: 1,
    deviceId: "dev-a",
    spec: SPEC,
    weights,
    modelSha256: weightsHash(weights),
    layoutHash: modelLayout(SPEC).hash,
    config: { epochs: 2, batchSize: 8, lr: 0.5, seed: 3 },
    data: { kind: "dataset" as const, dataset: { x, y, n, inputShape: [4], numClasses: 3 } },
  };
  const ex = new InProcessTrainExecutor();
  const plain = await ex.run(job, new AbortController().signal, () => {});
  const norm = (d: Float32Array) => Math.hypot(...d);
  const bound = norm(plain.delta) / 3;
  const bounded = await ex.run({ ...job, normBound: bound }, new AbortController().signal, () => {});
  assert.ok(
    Math.abs(norm(bounded.delta) - bound) < 1e-5,
    `bounded to ${norm(bounded.delta)}, bound ${bound}`,
  );
  for (let i = 0; i < plain.delta.length; i++)
    assert.ok(Math.abs(bounded.delta[i]! - plain.delta[i]! / 3) < 1e-5, `[${i}] same direction`);
  // A bound above the update's norm leaves it as it is.
  const loose = await ex.run(
    { ...job, normBound: 10 * norm(plain.delta) },
    new AbortController().signal,
    () => {},
  );
  assert.deepEqual(loose.delta, plain.delta);
});
