import { test } from "@jest/globals";
import * as assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { isFlotillaError } from "../../../core/errors";
import { makeDataset } from "../../../core/data/dataset";
import type { Dataset } from "../../../core/data/dataset";
import { Rng } from "../../../core/data/rng";
import { defaultSpec } from "../../../core/engine/model-spec";
import type { ModelSpec } from "../../../core/engine/model-spec";
import {
  anomalyAccuracy,
  countParams,
  createModel,
  initialWeights,
  modelLayout,
  quantile,
} from "../../../core/engine/models";
import { initBackend } from "../../../core/engine/backend";
import { benchTrain } from "../../../core/engine/bench";

/** Gaussian blobs: class k is centred at a random point, spread `noise`. */
function blobs(n: number, dim: number, classes: number, seed: number, noise = 0.3): Dataset {
  const rng = new Rng(seed);
  const centres = Array.from({ length: classes }, () => Array.from({ length: dim }, () => rng.normal()));
  const x = new Float32Array(n * dim);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const k = i % classes;
    y[i] = k;
    for (let d = 0; d < dim; d++) x[i * dim + d] = centres[k][d] + noise * rng.normal();
  }
  return makeDataset(x, y, [dim], classes);
}

function randomData(shape: number[], classes: number, n: number, seed: number): Dataset {
  const rng = new Rng(seed);
  const size = shape.reduce((a, b) => a * b, 1);
  const x = new Float32Array(n * size).map(() => rng.normal());
  const y = new Int32Array(n).map(() => rng.int(classes));
  return makeDataset(x, y, shape, classes);
}

function l2(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return Math.sqrt(s);
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => isFlotillaError(e) && e.code === code);
}

function throwsWith(f: () => unknown, code: string): void {
  assert.throws(f, (e: unknown) => isFlotillaError(e) && e.code === code);
}

// ------------------------------------------------------------------------------------------------------------
// Reference: the same networks with tfjs layers-free ops and autodiff (tf.grads) on the cpu backend.
// ------------------------------------------------------------------------------------------------------------

function referenceLoss(spec: ModelSpec, params: tf.Tensor[], x: tf.Tensor, y: tf.Tensor): tf.Scalar {
  const names = modelLayout(spec).entries.map((e) => e.name);
  const p = (name: string) => params[names.indexOf(name)];
  let h: tf.Tensor = x;
  const dense = (prefix: string, relu: boolean) => {
    const z = tf.add(tf.matMul(h as tf.Tensor2D, p(`${prefix}/kernel`) as tf.Tensor2D), p(`${prefix}/bias`));
    h = relu ? tf.relu(z) : z;
  };
  const layerNames = [...new Set(names.map((n) => n.split("/")[0]))];
  if (spec.kind === "cnn") {
    const convs = layerNames.filter((n) => n.startsWith("conv_"));
    for (const c of convs) {
      const z = tf.add(
        tf.conv2d(h as tf.Tensor4D, p(`${c}/kernel`) as tf.Tensor4D, 1, "same"),
        p(`${c}/bias`),
      );
      h = tf.maxPool(tf.relu(z) as tf.Tensor4D, 2, 2, "valid");
    }
    h = tf.reshape(h, [h.shape[0], -1]);
  } else if (spec.kind === "cnn1d") {
    const convs = layerNames.filter((n) => n.startsWith("conv1d_"));
    convs.forEach((c, i) => {
      const z = tf.add(
        tf.conv1d(h as tf.Tensor3D, p(`${c}/kernel`) as tf.Tensor3D, 1, "same"),
        p(`${c}/bias`),
      );
      h = tf.relu(z);
      if (i < convs.length - 1) {
        const [n, t, ch] = h.shape;
        h = tf.reshape(tf.maxPool(tf.reshape(h, [n, 1, t, ch]) as tf.Tensor4D, [1, 2], [1, 2], "valid"), [
          n,
          -1,
          ch,
        ]);
      }
    });
    h = tf.mean(h, 1);
  }
  const dense_ = layerNames.filter((n) => /^(dense|encoder|decoder)_/.test(n));
  dense_.forEach((d, i) => dense(d, i < dense_.length - 1));
  if (spec.kind === "autoencoder") return tf.mean(tf.square(tf.sub(h, x)));
  return tf.losses.softmaxCrossEntropy(y, h) as tf.Scalar;
}

/** One full-batch SGD step w − lr·(∇loss(w) + μ(w − w0)) computed by autodiff on the cpu backend. */
async function referenceStep(
  spec: ModelSpec,
  w: Float32Array,
  w0: Float32Array,
  data: Dataset,
  lr: number,
  mu: number,
): Promise<Float32Array> {
  const layout = modelLayout(spec);
  const prev = tf.getBackend();
  await tf.setBackend("cpu");
  try {
    return tf.tidy(() => {
      const params = layout.entries.map((e) => tf.tensor(w.slice(e.offset, e.offset + e.size), [...e.shape]));
      const x = tf.tensor(data.x, [data.n, ...data.inputShape]);
      const y = tf.oneHot(tf.tensor1d(data.y, "int32"), Math.max(2, spec.numClasses));
      const grads = tf.grads((...ps: tf.Tensor[]) => referenceLoss(spec, ps, x, y))(params);
      const out = new Float32Array(layout.totalSize);
      layout.entries.forEach((e, i) => {
        const g = grads[i].dataSync();
        for (let j = 0; j < e.size; j++) {
          const k = e.offset + j;
          out[k] = w[k] - lr * (g[j] + mu * (w[k] - w0[k]));
        }
      });
      return out;
    });
  } finally {
    await tf.setBackend(prev);
  }
}

const SMALL_SPECS: ModelSpec[] = [
  { kind: "mlp", inputShape: [12], numClasses: 4, hidden: [9, 7] },
  { kind: "cnn", inputShape: [8, 8, 2], numClasses: 3, filters: [4, 5], kernelSize: 3, dense: 6 },
  { kind: "cnn", inputShape: [9, 7, 1], numClasses: 3, filters: [3], kernelSize: 4, dense: 5 },
  { kind: "cnn1d", inputShape: [16, 3], numClasses: 5, filters: [4, 6], kernelSize: 3 },
  { kind: "autoencoder", inputShape: [10], numClasses: 2, hidden: [6, 3] },
];

test("parameter counts match the papers' architectures", async () => {
  assert.equal(countParams(defaultSpec("mlp", [784], 10)), 199_210);
  assert.equal(countParams(defaultSpec("cnn", [28, 28, 1], 10)), 1_663_370);
  assert.equal(countParams(defaultSpec("cnn", [784], 10)), 1_663_370);
  const c1 = countParams(defaultSpec("cnn1d", [64, 6], 5));
  assert.ok(c1 >= 10_000 && c1 <= 30_000, `cnn1d has ${c1} params`);
  const mlp = await createModel(defaultSpec("mlp", [784], 10), 1);
  const cnn = await createModel(defaultSpec("cnn", [28, 28, 1], 10), 1);
  try {
    assert.equal(mlp.numParams, 199_210);
    assert.equal(mlp.getWeights().length, 199_210);
    assert.equal(cnn.numParams, 1_663_370);
    assert.equal(cnn.layout.totalSize, 1_663_370);
    assert.deepEqual(
      mlp.layout.entries.map((e) => `${e.name}:${e.shape.join("x")}`),
      [
        "dense_0/kernel:784x200",
        "dense_0/bias:200",
        "dense_1/kernel:200x200",
        "dense_1/bias:200",
        "dense_2/kernel:200x10",
        "dense_2/bias:10",
      ],
    );
    assert.deepEqual(
      cnn.layout.entries.map((e) => e.name),
      [
        "conv_0/kernel",
        "conv_0/bias",
        "conv_1/kernel",
        "conv_1/bias",
        "dense_0/kernel",
        "dense_0/bias",
        "dense_1/kernel",
        "dense_1/bias",
      ],
    );
    assert.deepEqual(cnn.layout.entries[2].shape, [5, 5, 32, 64]);
  } finally {
    mlp.dispose();
    cnn.dispose();
  }
});

test("layout hash: equal for equal specs, different for different ones", () => {
  const a = modelLayout(defaultSpec("mlp", [784], 10));
  const b = modelLayout({ kind: "mlp", inputShape: [784], numClasses: 10, hidden: [200, 200] });
  assert.equal(a.hash, b.hash);
  const others = [
    modelLayout({ kind: "mlp", inputShape: [784], numClasses: 10, hidden: [100] }),
    modelLayout({ kind: "mlp", inputShape: [784], numClasses: 9, hidden: [200, 200] }),
    modelLayout(defaultSpec("cnn", [28, 28, 1], 10)),
    modelLayout(defaultSpec("autoencoder", [784], 2)),
    modelLayout(defaultSpec("cnn1d", [64, 6], 5)),
  ];
  const hashes = new Set([a.hash, ...others.map((l) => l.hash)]);
  assert.equal(hashes.size, 6);
});

test("same seed gives identical weights, another seed different ones; Glorot init, zero biases", async () => {
  const spec = defaultSpec("mlp", [784], 10);
  const m1 = await createModel(spec, 42);
  const m2 = await createModel(spec, 42);
  const m3 = await createModel(spec, 43);
  try {
    const w1 = m1.getWeights();
    assert.deepEqual(w1, m2.getWeights());
    assert.deepEqual(w1, initialWeights(spec, 42));
    assert.notDeepEqual(w1, m3.getWeights());
    const [k0, b0] = m1.layout.entries;
    const limit = Math.sqrt(6 / (784 + 200));
    const kernel = w1.subarray(k0.offset, k0.offset + k0.size);
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of kernel) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    assert.ok(
      hi <= limit && lo >= -limit && hi > 0.99 * limit && lo < -0.99 * limit,
      `kernel in [${lo}, ${hi}]`,
    );
    assert.ok(w1.subarray(b0.offset, b0.offset + b0.size).every((v) => v === 0));
  } finally {
    m1.dispose();
    m2.dispose();
    m3.dispose();
  }
});

test("getWeights/setWeights round trip, bad lengths rejected with a FlotillaError", async () => {
  for (const spec of SMALL_SPECS) {
    const m = await createModel(spec, 7);
    try {
      const rng = new Rng(3);
      const w = new Float32Array(m.numParams).map(() => rng.normal());
      m.setWeights(w);
      assert.deepEqual(m.getWeights(), w, spec.kind);
      throwsWith(() => m.setWeights(new Float32Array(m.numParams + 1)), "E_MODEL_LAYOUT");
      throwsWith(() => m.setWeights(new Float32Array(m.numParams - 1)), "E_MODEL_LAYOUT");
      assert.deepEqual(m.getWeights(), w, "a rejected setWeights leaves the weights alone");
    } finally {
      m.dispose();
    }
  }
});

test("one SGD step equals autodiff on the cpu backend, for every model kind", async () => {
  await initBackend();
  for (const spec of SMALL_SPECS) {
    const n = 7;
    const data = randomData([...spec.inputShape], Math.max(2, spec.numClasses), n, 11);
    const m = await createModel(spec, 5);
    try {
      // Random (not initial) weights so that biases and all units are active.
      const rng = new Rng(8);
      const w = new Float32Array(m.numParams).map(() => 0.4 * rng.normal());
      m.setWeights(w);
      const lr = 0.1;
      const expected = await referenceStep(spec, w, w, data, lr, 0);
      await m.train(data, { epochs: 1, batchSize: n, lr, seed: 1 });
      const got = m.getWeights();
      const scale = Math.max(1e-3, l2(expected, w));
      const err = l2(got, expected) / scale;
      assert.ok(err < 1e-4, `${spec.kind} [${spec.inputShape}]: step differs by ${err}`);
      // Two full-batch FedProx steps: the second has the proximal gradient μ(w1 − w0).
      const mu = 0.7;
      const w1 = await referenceStep(spec, w, w, data, lr, mu);
      const w2 = await referenceStep(spec, w1, w, data, lr, mu);
      m.setWeights(w);
      await m.train(data, { epochs: 2, batchSize: n, lr, seed: 1, mu });
      const errProx = l2(m.getWeights(), w2) / Math.max(1e-3, l2(w2, w));
      assert.ok(errProx < 1e-4, `${spec.kind}: FedProx steps differ by ${errProx}`);
    } finally {
      m.dispose();
    }
  }
});

test("training separates blobs; loss and accuracy reported; evaluate is consistent", async () => {
  const spec: ModelSpec = { kind: "mlp", inputShape: [16], numClasses: 4, hidden: [32, 32] };
  const train = blobs(400, 16, 4, 1);
  const held = blobs(200, 16, 4, 1); // same centres (same seed), fresh noise below
  const heldOut = makeDataset(
    held.x.map((v, i) => v + 0.1 * Math.sin(i)),
    held.y,
    [16],
    4,
  );
  const m = await createModel(spec, 3);
  try {
    const before = m.evaluate(train);
    assert.ok(before.loss > 0.5);
    const progress: number[] = [];
    const s = await m.train(train, {
      epochs: 8,
      batchSize: 10,
      lr: 0.05,
      seed: 2,
      onProgress: (done, total) => {
        assert.equal(total, 3200);
        progress.push(done);
      },
    });
    assert.equal(s.samples, 3200);
    assert.equal(s.steps, 320);
    assert.ok(s.ms > 0);
    assert.equal(progress.length, 320);
    assert.equal(progress[progress.length - 1], 3200);
    assert.ok(progress.every((v, i) => i === 0 || v > progress[i - 1]));
    assert.ok(s.loss < 0.2 && s.loss < before.loss / 3, `train loss ${s.loss}`);
    assert.ok(s.accuracy > 0.95, `train accuracy ${s.accuracy}`);
    const after = m.evaluate(train);
    assert.ok(after.loss < before.loss / 3);
    assert.ok(after.accuracy > 0.95);
    assert.equal(after.n, 400);
    assert.ok(m.evaluate(heldOut).accuracy > 0.9);
    // Batched evaluation gives the same result for any batch size, and repeats exactly.
    const e1 = m.evaluate(train, 7);
    const e2 = m.evaluate(train, 1000);
    assert.ok(Math.abs(e1.loss - after.loss) < 1e-5 && Math.abs(e2.loss - after.loss) < 1e-5);
    assert.equal(e1.accuracy, after.accuracy);
    assert.deepEqual(m.evaluate(train), after);
  } finally {
    m.dispose();
  }
});

test("training is deterministic for the same weights and seed", async () => {
  const spec: ModelSpec = { kind: "mlp", inputShape: [16], numClasses: 4, hidden: [20] };
  const data = blobs(100, 16, 4, 9);
  const run = async (seed: number) => {
    const m = await createModel(spec, 1);
    try {
      await m.train(data, { epochs: 2, batchSize: 8, lr: 0.05, seed });
      return m.getWeights();
    } finally {
      m.dispose();
    }
  };
  const a = await run(4);
  assert.deepEqual(await run(4), a);
  assert.notDeepEqual(await run(5), a, "another shuffle seed gives another trajectory");
});

test("FedProx with a large mu keeps the weights closer to w0", async () => {
  const spec: ModelSpec = { kind: "mlp", inputShape: [16], numClasses: 4, hidden: [20] };
  const data = blobs(200, 16, 4, 5);
  const m = await createModel(spec, 2);
  try {
    const w0 = m.getWeights();
    const opts = { epochs: 3, batchSize: 10, lr: 0.05, seed: 1 };
    await m.train(data, opts);
    const plain = l2(m.getWeights(), w0);
    m.setWeights(w0);
    await m.train(data, { ...opts, mu: 5 });
    const prox = l2(m.getWeights(), w0);
    assert.ok(plain > 0);
    assert.ok(prox < 0.6 * plain, `||w - w0||: mu=0 ${plain}, mu=5 ${prox}`);
  } finally {
    m.dispose();
  }
});

test("cnn (McMahan) and cnn1d train a few steps on the wasm backend", async () => {
  const cnn = await createModel(defaultSpec("cnn", [28, 28, 1], 10), 1);
  try {
    const data = randomData([28, 28, 1], 10, 20, 3);
    const w0 = cnn.getWeights();
    const s = await cnn.train(data, { epochs: 1, batchSize: 10, lr: 0.05, seed: 1 });
    assert.equal(s.steps, 2);
    assert.ok(Number.isFinite(s.loss) && s.accuracy >= 0 && s.accuracy <= 1);
    const w1 = cnn.getWeights();
    assert.ok(w1.every(Number.isFinite));
    assert.ok(l2(w1, w0) > 0);
    const e = cnn.evaluate(data, 8);
    assert.equal(e.n, 20);
    assert.ok(Number.isFinite(e.loss));
  } finally {
    cnn.dispose();
  }
  // cnn1d learns a channel-mean problem: class k has channel k offset.
  const spec = defaultSpec("cnn1d", [32, 3], 3);
  const rng = new Rng(4);
  const n = 150;
  const x = new Float32Array(n * 32 * 3);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    y[i] = i % 3;
    for (let t = 0; t < 32; t++)
      for (let c = 0; c < 3; c++) x[(i * 32 + t) * 3 + c] = 0.5 * rng.normal() + (c === y[i] ? 1 : 0);
  }
  const data = makeDataset(x, y, [32, 3], 3);
  const m = await createModel(spec, 1);
  try {
    const before = m.evaluate(data);
    await m.train(data, { epochs: 15, batchSize: 10, lr: 0.05, seed: 1 });
    const after = m.evaluate(data);
    assert.ok(after.loss < before.loss / 2, `cnn1d loss ${before.loss} -> ${after.loss}`);
    assert.ok(after.accuracy > 0.9, `cnn1d accuracy ${after.accuracy}`);
  } finally {
    m.dispose();
  }
});

test("autoencoder trains and detects anomalies; accuracy in [0, 1]", async () => {
  const dim = 20;
  const rng = new Rng(6);
  // Normal data lies near a 2-D subspace; anomalies (label 1) are isotropic noise of the same scale.
  const basis = [0, 1].map(() => Array.from({ length: dim }, () => rng.normal() / Math.sqrt(dim)));
  const make = (n: number, anomalyEvery: number) => {
    const x = new Float32Array(n * dim);
    const y = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const anomaly = anomalyEvery > 0 && i % anomalyEvery === 0;
      y[i] = anomaly ? 1 : 0;
      const a = rng.normal();
      const b = rng.normal();
      for (let d = 0; d < dim; d++) {
        x[i * dim + d] = anomaly
          ? rng.normal()
          : (a * basis[0][d] + b * basis[1][d]) * Math.sqrt(dim) + 0.05 * rng.normal();
      }
    }
    return makeDataset(x, y, [dim], 2);
  };
  const trainData = make(300, 0);
  const testData = make(200, 5);
  const m = await createModel({ kind: "autoencoder", inputShape: [dim], numClasses: 2, hidden: [16, 4] }, 1);
  try {
    const before = m.evaluate(trainData);
    const s = await m.train(trainData, { epochs: 30, batchSize: 10, lr: 0.05, seed: 1 });
    assert.ok(Number.isNaN(s.accuracy));
    assert.ok(s.loss < before.loss, `train loss ${s.loss} vs initial ${before.loss}`);
    const after = m.evaluate(trainData);
    assert.ok(after.loss < before.loss / 2, `reconstruction ${before.loss} -> ${after.loss}`);
    const e = m.evaluate(testData);
    assert.ok(e.accuracy >= 0 && e.accuracy <= 1);
    // 5% of the normals lie above their own 95th percentile, so ~0.96 is the best possible here.
    assert.ok(e.accuracy > 0.9, `anomaly accuracy ${e.accuracy}`);
    assert.ok(Number.isNaN(m.evaluate(make(10, 1)).accuracy), "no normal samples: accuracy NaN");
  } finally {
    m.dispose();
  }
});

test("anomaly threshold: 95th percentile of the normal samples' errors", () => {
  assert.equal(quantile([1, 2, 3, 4, 5], 0.5), 3);
  assert.equal(quantile([0, 10], 0.95), 9.5);
  // 20 normals with errors 1..20 -> threshold 19.05; anomalies with 30 and 5.
  const errors = [...Array.from({ length: 20 }, (_, i) => i + 1), 30, 5];
  const labels = [...new Array(20).fill(0), 1, 2];
  // normals: only 20 (> 19.05) is misflagged; anomalies: 30 caught, 5 missed -> 20/22 correct.
  assert.equal(anomalyAccuracy(errors, labels), 20 / 22);
});

test("abort, bad options, bad data and disposed models fail with FlotillaErrors", async () => {
  const spec: ModelSpec = { kind: "mlp", inputShape: [4], numClasses: 2, hidden: [3] };
  const data = randomData([4], 2, 30, 1);
  const m = await createModel(spec, 1);
  const w0 = m.getWeights();
  const ac = new AbortController();
  ac.abort();
  await rejectsWith(
    m.train(data, { epochs: 1, batchSize: 5, lr: 0.1, seed: 1, abortSignal: ac.signal }),
    "E_ABORTED",
  );
  assert.deepEqual(m.getWeights(), w0);
  // Abort mid-way through from the progress callback.
  const ac2 = new AbortController();
  let seen = 0;
  await rejectsWith(
    m.train(data, {
      epochs: 5,
      batchSize: 5,
      lr: 0.1,
      seed: 1,
      abortSignal: ac2.signal,
      onProgress: (done) => {
        seen = done;
        if (done >= 10) ac2.abort();
      },
    }),
    "E_ABORTED",
  );
  assert.equal(seen, 10);
  await rejectsWith(m.train(data, { epochs: 1, batchSize: 0, lr: 0.1, seed: 1 }), "E_CONFIG_TRAIN");
  await rejectsWith(m.train(data, { epochs: 1, batchSize: 5, lr: 0.1, seed: 1, mu: -1 }), "E_CONFIG_TRAIN");
  await rejectsWith(
    m.train(randomData([5], 2, 10, 1), { epochs: 1, batchSize: 5, lr: 0.1, seed: 1 }),
    "E_DATA_SHAPE",
  );
  await rejectsWith(
    m.train(randomData([4], 3, 10, 1), { epochs: 1, batchSize: 5, lr: 0.1, seed: 1 }),
    "E_DATA_LABEL",
  );
  throwsWith(() => m.evaluate(randomData([5], 2, 10, 1)), "E_DATA_SHAPE");
  const empty = await m.train(makeDataset(new Float32Array(0), new Int32Array(0), [4], 2), {
    epochs: 2,
    batchSize: 5,
    lr: 0.1,
    seed: 1,
  });
  assert.equal(empty.steps, 0);
  assert.equal(m.evaluate(makeDataset(new Float32Array(0), new Int32Array(0), [4], 2)).n, 0);
  m.dispose();
  throwsWith(() => m.getWeights(), "E_MODEL_DISPOSED");
  await rejectsWith(createModel({ kind: "cnn", inputShape: [784], numClasses: 10 }, 1), "E_MODEL_SHAPE");
});

test("train and evaluate leave no tensors behind; a training model rejects setWeights and dispose", async () => {
  for (const spec of SMALL_SPECS) {
    const m = await createModel(spec, 1);
    const data = randomData([...spec.inputShape], Math.max(2, spec.numClasses), 23, 2);
    const before = tf.memory().numTensors;
    await m.train(data, { epochs: 2, batchSize: 5, lr: 0.05, seed: 1 });
    await m.train(data, { epochs: 1, batchSize: 5, lr: 0.05, seed: 1, mu: 0.5 });
    m.evaluate(data, 4);
    assert.equal(tf.memory().numTensors, before, spec.kind);
    const running = m.train(data, { epochs: 1, batchSize: 5, lr: 0.05, seed: 1 });
    throwsWith(() => m.setWeights(new Float32Array(m.numParams)), "E_MODEL_BUSY");
    throwsWith(() => m.dispose(), "E_MODEL_BUSY");
    await running;
    m.dispose();
    assert.equal(tf.memory().numTensors, before - m.layout.entries.length, spec.kind);
  }
});

test("benchTrain measures samples per second after a warm-up", async () => {
  const r = await benchTrain({ model: "cnn1d", batchSize: 10, seconds: 0.4 });
  assert.equal(r.model, "cnn1d");
  assert.equal(r.batchSize, 10);
  assert.equal(r.params, countParams(defaultSpec("cnn1d", [64, 6], 5)));
  assert.equal(r.repetitions?.length, 5);
  assert.ok(r.samplesPerSecond > 0 && Number.isFinite(r.samplesPerSecond));
  const sorted = [...(r.repetitions ?? [])].sort((a, b) => a - b);
  assert.equal(r.samplesPerSecond, sorted[2], "the median repetition");
  await rejectsWith(benchTrain({ model: "resnet", batchSize: 10 }), "E_CONFIG_MODEL");
  await rejectsWith(benchTrain({ model: "mlp", batchSize: 0 }), "E_CONFIG_BENCH");
});
