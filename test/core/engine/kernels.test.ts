import { beforeAll, test } from "@jest/globals";
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { registerWasmTrainingKernels, wasmTrainingKernelsRegistered } from "../../../core/engine/kernels";

/** mulberry32: a small seeded PRNG so both backends see bit-identical inputs. */
function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function values(size: number, seed: number, kind: "normal" | "ties" = "normal"): Float32Array {
  const rand = seeded(seed);
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    // "ties": small integers, half of them clamped to 0 like relu outputs, so pooling windows tie often
    out[i] =
      kind === "ties" ? Math.max(0, Math.floor(rand() * 6) - 3) : (rand() + rand() + rand() - 1.5) * 1.4;
  }
  return out;
}

const size = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);

/** Runs `compute` on a backend and returns its outputs as plain arrays (all tensors disposed, leaks checked). */
async function onBackend(
  name: "cpu" | "wasm",
  compute: () => tf.Tensor[],
): Promise<{ values: Float32Array[]; shapes: number[][] }> {
  assert.ok(await tf.setBackend(name));
  await tf.ready();
  const before = tf.memory().numTensors;
  const dataIdsBefore = tf.backend().numDataIds();
  const outs = tf.tidy(compute);
  const result = { values: outs.map((t) => t.dataSync() as Float32Array), shapes: outs.map((t) => t.shape) };
  tf.dispose(outs);
  assert.equal(tf.memory().numTensors, before, `${name}: tensors leaked`);
  assert.equal(tf.backend().numDataIds(), dataIdsBefore, `${name}: backend buffers leaked`);
  return result;
}

/** Computes on cpu and wasm and asserts max |wasm − cpu| ≤ 1e-4 · max(1, max |cpu|) for every output. */
async function compareBackends(label: string, compute: () => tf.Tensor[]): Promise<void> {
  const cpu = await onBackend("cpu", compute);
  const wasm = await onBackend("wasm", compute);
  assert.equal(wasm.values.length, cpu.values.length);
  cpu.values.forEach((ref, i) => {
    assert.deepEqual(wasm.shapes[i], cpu.shapes[i], `${label}: output ${i} shape`);
    let scale = 1;
    let maxDiff = 0;
    for (let j = 0; j < ref.length; j++) {
      scale = Math.max(scale, Math.abs(ref[j]));
      maxDiff = Math.max(maxDiff, Math.abs(ref[j] - wasm.values[i][j]));
    }
    assert.ok(Number.isFinite(maxDiff), `${label}: output ${i} not finite`);
    assert.ok(maxDiff / scale <= 1e-4, `${label}: output ${i} max |diff| ${maxDiff} (scale ${scale})`);
  });
}

/** Gradients of a random linear functional of op(x, w), so dy is dense and non-uniform. */
function gradsOf(
  op: (x: tf.Tensor4D, w: tf.Tensor4D) => tf.Tensor4D,
  xShape: number[],
  wShape: number[],
  seed: number,
): () => tf.Tensor[] {
  const xv = values(size(xShape), seed);
  const wv = values(size(wShape), seed + 1);
  return () => {
    const x = tf.tensor4d(xv, xShape as [number, number, number, number]);
    const w = tf.tensor4d(wv, wShape as [number, number, number, number]);
    const yShape = op(x, w).shape;
    const r = tf.tensor(values(size(yShape), seed + 2), yShape);
    const g = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
      tf.sum(tf.mul(op(a as tf.Tensor4D, b as tf.Tensor4D), r)),
    );
    return g([x, w]);
  };
}

beforeAll(async () => {
  registerWasmTrainingKernels();
  assert.ok(await tf.setBackend("wasm"));
  await tf.ready();
});

type Pad = "same" | "valid" | number;
interface ConvCase {
  x: [number, number, number, number];
  k: number;
  out: number;
  stride: 1 | 2;
  pad: Pad;
}

const convCases: ConvCase[] = [
  { x: [1, 7, 7, 1], k: 3, out: 2, stride: 1, pad: "same" },
  { x: [2, 9, 8, 3], k: 3, out: 4, stride: 2, pad: "same" },
  { x: [3, 11, 11, 2], k: 5, out: 3, stride: 1, pad: "valid" },
  { x: [2, 10, 9, 4], k: 5, out: 5, stride: 2, pad: "valid" },
  { x: [2, 8, 8, 3], k: 3, out: 2, stride: 2, pad: "same" },
  { x: [1, 6, 7, 2], k: 5, out: 3, stride: 2, pad: "same" },
  { x: [2, 9, 7, 3], k: 3, out: 2, stride: 2, pad: "valid" },
  { x: [4, 12, 12, 1], k: 5, out: 8, stride: 1, pad: "same" },
  { x: [2, 8, 9, 2], k: 3, out: 3, stride: 2, pad: 1 },
  { x: [1, 5, 5, 2], k: 1, out: 2, stride: 2, pad: "valid" },
  { x: [2, 6, 5, 2], k: 1, out: 3, stride: 1, pad: 1 },
];

test("conv2d gradients (dx, dW) on wasm match cpu", async () => {
  for (const [i, c] of convCases.entries()) {
    const label = `conv2d x=[${c.x}] k=${c.k} out=${c.out} stride=${c.stride} pad=${c.pad}`;
    const op = (x: tf.Tensor4D, w: tf.Tensor4D) => tf.conv2d(x, w, c.stride, c.pad);
    await compareBackends(label, gradsOf(op, c.x, [c.k, c.k, c.x[3], c.out], 100 + i * 7));
  }
});

test("conv1d-shaped conv2d (height 1) gradients on wasm match cpu", async () => {
  const op = (x: tf.Tensor4D, w: tf.Tensor4D) => tf.conv2d(x, w, [1, 2], "same");
  await compareBackends("conv 1x3 stride 2", gradsOf(op, [3, 1, 13, 4], [1, 3, 4, 5], 7));
});

test("conv2dTranspose (Conv2DBackpropInput forward) on wasm matches cpu", async () => {
  for (const [i, c] of convCases.slice(0, 6).entries()) {
    const info = tf.backend_util.computeConv2DInfo(c.x, [c.k, c.k, c.x[3], c.out], c.stride, 1, c.pad);
    const dyShape = [c.x[0], info.outHeight, info.outWidth, c.out];
    const dyv = values(size(dyShape), 300 + i);
    const wv = values(c.k * c.k * c.x[3] * c.out, 301 + i);
    await compareBackends(`conv2dTranspose ${i}`, () => [
      tf.conv2dTranspose(
        tf.tensor4d(dyv, dyShape as [number, number, number, number]),
        tf.tensor4d(wv, [c.k, c.k, c.x[3], c.out]),
        c.x,
        c.stride,
        c.pad,
      ),
    ]);
  }
});

test("Conv2DBackpropInput with NCHW data still works (original wasm kernel)", async () => {
  const dyv = values(2 * 3 * 4 * 4, 11);
  const wv = values(3 * 3 * 2 * 3, 12);
  await compareBackends("Conv2DBackpropInput NCHW", () => [
    tf
      .engine()
      .runKernel(
        "Conv2DBackpropInput",
        { dy: tf.tensor4d(dyv, [2, 3, 4, 4]), filter: tf.tensor4d(wv, [3, 3, 2, 3]) },
        { inputShape: [2, 2, 7, 7], strides: 2, pad: "same", dataFormat: "NCHW" },
      ) as tf.Tensor,
  ]);
});

test("depthwiseConv2d gradients (dx, dW) on wasm match cpu", async () => {
  let seed = 500;
  for (const c of convCases) {
    for (const multiplier of [1, 2]) {
      const label = `depthwise x=[${c.x}] k=${c.k} m=${multiplier} stride=${c.stride} pad=${c.pad}`;
      const op = (x: tf.Tensor4D, w: tf.Tensor4D) => tf.depthwiseConv2d(x, w, c.stride, c.pad);
      await compareBackends(label, gradsOf(op, c.x, [c.k, c.k, c.x[3], multiplier], (seed += 5)));
    }
  }
});

test("maxPool gradients on wasm match cpu, ties included", async () => {
  const cases: { x: [number, number, number, number]; k: number; stride: number; pad: Pad }[] = [
    { x: [2, 8, 8, 3], k: 2, stride: 2, pad: "valid" },
    { x: [2, 7, 7, 3], k: 2, stride: 2, pad: "same" },
    { x: [1, 9, 9, 2], k: 3, stride: 1, pad: "same" },
    { x: [3, 7, 6, 4], k: 3, stride: 2, pad: "same" },
    { x: [2, 9, 7, 2], k: 3, stride: 2, pad: "valid" },
    { x: [1, 6, 6, 1], k: 2, stride: 1, pad: "valid" },
    { x: [2, 8, 8, 2], k: 3, stride: 2, pad: 1 },
  ];
  for (const [i, c] of cases.entries()) {
    for (const kind of ["normal", "ties"] as const) {
      const xv = values(size(c.x), 700 + i, kind);
      await compareBackends(`maxPool x=[${c.x}] k=${c.k} s=${c.stride} pad=${c.pad} ${kind}`, () => {
        const x = tf.tensor4d(xv, c.x);
        const yShape = tf.maxPool(x, c.k, c.stride, c.pad).shape;
        const r = tf.tensor(values(size(yShape), 800 + i), yShape);
        return [
          tf.grad((a: tf.Tensor) => tf.sum(tf.mul(tf.maxPool(a as tf.Tensor4D, c.k, c.stride, c.pad), r)))(x),
        ];
      });
    }
  }
});

test("fused matMul (Dense layers: matmul + bias + activation) and its gradients on wasm match cpu", async () => {
  const acts = ["linear", "relu", "relu6", "elu", "sigmoid", "leakyrelu", "prelu"] as const;
  let seed = 1000;
  for (const [i, act] of acts.entries()) {
    for (const [ta, tb] of [
      [false, false],
      [true, false],
      [false, true],
    ] as const) {
      const [m, k, n] = [7, 33, 12 + i];
      const av = values(m * k, (seed += 3));
      const bv = values(k * n, seed + 1);
      const biasv = values(n, seed + 2);
      await compareBackends(`fused matMul ${act} tA=${ta} tB=${tb}`, () => {
        const a = tf.tensor2d(av, ta ? [k, m] : [m, k]);
        const b = tf.tensor2d(bv, tb ? [n, k] : [k, n]);
        const bias = tf.tensor1d(biasv);
        const alpha = act === "prelu" ? tf.fill([n], 0.1) : undefined;
        const f = (x: tf.Tensor, w: tf.Tensor, c: tf.Tensor) =>
          tf.fused.matMul({
            a: x as tf.Tensor2D,
            b: w as tf.Tensor2D,
            transposeA: ta,
            transposeB: tb,
            bias: c,
            activation: act,
            preluActivationWeights: alpha,
            leakyreluAlpha: 0.2,
          });
        const y = f(a, b, bias);
        const grads = tf.grads((x: tf.Tensor, w: tf.Tensor, c: tf.Tensor) => tf.sum(tf.square(f(x, w, c))))([
          a,
          b,
          bias,
        ]);
        return [y, ...grads];
      });
    }
  }
});

test("unsortedSegmentSum (Gather's gradient: Embedding) on wasm matches cpu", async () => {
  const cases: { x: number[]; ids: number[]; idsShape: number[]; segments: number }[] = [
    { x: [6, 4], ids: [0, 2, 2, 5, 1, 0], idsShape: [6], segments: 7 },
    { x: [6, 3, 2], ids: [1, 0, 1, 3, 3, 1], idsShape: [6], segments: 4 },
    { x: [5], ids: [-1, 0, 4, 4, 9], idsShape: [5], segments: 5 },
  ];
  for (const [i, c] of cases.entries()) {
    const xv = values(size(c.x), 900 + i);
    await compareBackends(`unsortedSegmentSum x=[${c.x}] ids=${c.ids}`, () => {
      const ids = tf.tensor(c.ids, c.idsShape, "int32") as unknown as tf.Tensor1D;
      return [tf.unsortedSegmentSum(tf.tensor(xv, c.x), ids, c.segments)];
    });
  }
  // And through Gather's gradient, as an Embedding layer trains.
  await compareBackends("gather gradient", () => {
    const table = tf.tensor2d(values(40, 950), [10, 4]);
    const idx = tf.tensor2d([1, 3, 3, 9, 0, 1], [2, 3], "int32");
    return [tf.grad((t: tf.Tensor) => tf.sum(tf.square(tf.gather(t, idx))))(table)];
  });
});

test("matMul with transposed operands and its gradients on wasm match cpu", async () => {
  const shapes: [number, number, number][] = [
    [10, 64, 37],
    [5, 7, 3],
    [1, 9, 12],
    [33, 2, 40],
  ];
  for (const [i, [m, k, n]] of shapes.entries()) {
    const av = values(m * k, 900 + i);
    const bv = values(k * n, 950 + i);
    await compareBackends(`matMul ${m}x${k}x${n}`, () => {
      const a = tf.tensor2d(av, [m, k]);
      const b = tf.tensor2d(bv, [k, n]);
      const aT = tf.transpose(a);
      const bT = tf.transpose(b);
      const r = tf.tensor2d(values(m * n, 990 + i), [m, n]);
      const loss = (x: tf.Tensor, y: tf.Tensor) =>
        tf.sum(tf.mul(tf.matMul(x as tf.Tensor2D, y as tf.Tensor2D), r));
      return [
        tf.matMul(aT, b, true, false),
        tf.matMul(a, bT, false, true),
        tf.matMul(aT, bT, true, true),
        tf.matMul(aT.reshape([1, k, m]), bT.reshape([1, n, k]), true, true),
        ...tf.grads(loss)([a, b]),
      ];
    });
  }
  // batched products still go to the original kernel
  const av = values(3 * 4 * 5, 1);
  const bv = values(3 * 6 * 5, 2);
  await compareBackends("batched matMul", () => [
    tf.matMul(tf.tensor3d(av, [3, 4, 5]), tf.tensor3d(bv, [3, 6, 5]), false, true),
  ]);
});

test("a small conv net's variable gradients on wasm match cpu", async () => {
  const shapes: Record<string, number[]> = { c1: [5, 5, 1, 4], c2: [3, 3, 4, 6], d: [3 * 3 * 6, 5], b: [5] };
  const init = Object.fromEntries(Object.entries(shapes).map(([k, s], i) => [k, values(size(s), 40 + i)]));
  const xv = values(4 * 12 * 12, 60);
  const labels = Array.from({ length: 4 }, (_, i) => (i * 3) % 5);
  await compareBackends("small cnn", () => {
    const vars = Object.fromEntries(
      Object.entries(shapes).map(([k, s]) => [k, tf.variable(tf.tensor(init[k], s))]),
    );
    const x = tf.tensor4d(xv, [4, 12, 12, 1]);
    const y = tf.oneHot(tf.tensor1d(labels, "int32"), 5);
    const { grads, value } = tf.variableGrads(() => {
      let h: tf.Tensor4D = tf.relu(tf.conv2d(x, vars.c1 as tf.Variable<tf.Rank.R4>, 1, "same"));
      h = tf.maxPool(h, 2, 2, "valid");
      h = tf.relu(tf.conv2d(h, vars.c2 as tf.Variable<tf.Rank.R4>, 1, "same"));
      h = tf.maxPool(h, 2, 2, "valid");
      const logits = tf.add(tf.matMul(tf.reshape(h, [4, -1]), vars.d as tf.Tensor2D), vars.b);
      return tf.losses.softmaxCrossEntropy(y, logits) as tf.Scalar;
    }, Object.values(vars));
    const out = [value, ...Object.keys(shapes).map((k) => grads[vars[k].name])];
    tf.dispose(Object.values(vars));
    return out;
  });
});

test("registration is idempotent and keeps the replaced kernels", () => {
  registerWasmTrainingKernels();
  const configs = [
    "Conv2DBackpropFilter",
    "Conv2DBackpropInput",
    "MaxPoolGrad",
    "BatchMatMul",
    "_FusedMatMul",
  ].map((n) => tf.getKernel(n, "wasm"));
  registerWasmTrainingKernels();
  registerWasmTrainingKernels();
  assert.ok(wasmTrainingKernelsRegistered());
  ["Conv2DBackpropFilter", "Conv2DBackpropInput", "MaxPoolGrad", "BatchMatMul", "_FusedMatMul"].forEach(
    (n, i) => assert.equal(tf.getKernel(n, "wasm"), configs[i]),
  );
  for (const name of [
    "DepthwiseConv2dNativeBackpropFilter",
    "DepthwiseConv2dNativeBackpropInput",
    "UnsortedSegmentSum",
  ]) {
    assert.ok(tf.getKernel(name, "wasm"));
  }
});

test("unsupported dilations and data formats fail with a clear error", async () => {
  assert.ok(await tf.setBackend("wasm"));
  const backend = tf.backend() as BackendWasm;
  const idsBefore = backend.numDataIds();
  tf.tidy(() => {
    const x = tf.ones([1, 6, 6, 2]);
    const dy = tf.ones([1, 2, 2, 2]);
    assert.throws(
      () =>
        tf
          .engine()
          .runKernel(
            "DepthwiseConv2dNativeBackpropFilter",
            { x, dy },
            { strides: 1, pad: "valid", dilations: 2, filterShape: [3, 3, 2, 1] },
          ),
      /supports only dilation 1/,
    );
    assert.throws(
      () =>
        tf
          .engine()
          .runKernel(
            "Conv2DBackpropFilter",
            { x, dy },
            { strides: 1, pad: "valid", dataFormat: "NCHW", filterShape: [3, 3, 2, 2] },
          ),
      /supports only dataFormat 'NHWC'/,
    );
  });
  assert.equal(backend.numDataIds(), idsBefore);
});
