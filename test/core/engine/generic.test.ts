import { beforeAll, test } from "@jest/globals";
import * as assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { isFlotillaError } from "../../../core/errors";
import { makeDataset, type Dataset } from "../../../core/data/dataset";
import { Rng } from "../../../core/data/rng";
import { initBackend } from "../../../core/engine/backend";
import { GenericModel } from "../../../core/engine/generic";
import type { GraphSpec, LayerSpec, OptimizerConfig } from "../../../core/engine/graph-spec";
import { presetGraph } from "../../../core/engine/graph";
import { rocAuc } from "../../../core/engine/metrics";
import { defaultSpec, type PresetSpec } from "../../../core/engine/model-spec";
import { createModel, modelPath } from "../../../core/engine/models";
import { initialWeights, modelLayout } from "../../../core/engine/plan";
import type { TrainOptions } from "../../../core/engine/types";

beforeAll(async () => {
  await initBackend();
});

const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

function data(spec: GraphSpec, n: number, seed: number): Dataset {
  const rng = new Rng(seed);
  const d = size(spec.inputShape);
  const emb = spec.layers.find((l) => l.type === "Embedding");
  const x = new Float32Array(n * d).map(() =>
    emb?.type === "Embedding" ? rng.int(emb.inputDim) : rng.normal(),
  );
  const classes = spec.task === "classification" || spec.task === "binary" ? spec.numClasses : 2;
  const y = new Int32Array(n).map((_, i) => i % classes);
  const ds = makeDataset(x, y, spec.inputShape, classes);
  if (spec.task !== "regression") return ds;
  const targets = new Float32Array(n * spec.numClasses).map(() => rng.normal());
  return { ...ds, targets, targetSize: spec.numClasses };
}

const head = (units = 3): LayerSpec[] => [
  { name: "flat", type: "Flatten" },
  { name: "out", type: "Dense", units, activation: "softmax" },
];
const classifier = (
  inputShape: number[],
  layers: LayerSpec[],
  extra: Partial<GraphSpec> = {},
): GraphSpec => ({
  kind: "graph",
  inputShape,
  layers,
  loss: "sparse_categorical_crossentropy",
  task: "classification",
  numClasses: 3,
  ...extra,
});

/** Together these cover every layer type, activation, task and loss. */
const CASES: Record<string, GraphSpec> = {
  dense: classifier([5], [{ name: "d", type: "Dense", units: 4, activation: "relu" }, head()[1]]),
  conv1d: classifier(
    [12, 3],
    [
      {
        name: "c",
        type: "Conv1D",
        filters: 4,
        kernelSize: 3,
        strides: 2,
        padding: "same",
        activation: "elu",
      },
      { name: "c2", type: "Conv1D", filters: 3, kernelSize: 3, dilationRate: 2, activation: "selu" },
      ...head(),
    ],
  ),
  conv2d: classifier(
    [9, 9, 2],
    [
      {
        name: "c",
        type: "Conv2D",
        filters: 4,
        kernelSize: [3, 3],
        strides: [2, 1],
        padding: "same",
        activation: "relu6",
      },
      {
        name: "c2",
        type: "Conv2D",
        filters: 3,
        kernelSize: [2, 2],
        dilationRate: [2, 2],
        activation: "relu",
      },
      ...head(),
    ],
  ),
  depthwise: classifier(
    [9, 9, 2],
    [
      {
        name: "c",
        type: "DepthwiseConv2D",
        kernelSize: [3, 3],
        strides: [2, 2],
        depthMultiplier: 2,
        padding: "same",
        activation: "softplus",
      },
      { name: "s", type: "SeparableConv2D", filters: 3, kernelSize: [3, 3], activation: "softsign" },
      ...head(),
    ],
  ),
  pools: classifier(
    [8, 8, 2],
    [
      { name: "a", type: "AveragePooling2D", poolSize: [2, 2] },
      { name: "m", type: "MaxPooling2D", poolSize: [2, 2], padding: "same", strides: [1, 1] },
      { name: "g", type: "GlobalAveragePooling2D" },
      head()[1],
    ],
  ),
  pools1d: classifier(
    [12, 3],
    [
      { name: "a", type: "AveragePooling1D", poolSize: 2, padding: "same" },
      { name: "m", type: "MaxPooling1D", poolSize: 3, strides: 1 },
      { name: "g", type: "GlobalAveragePooling1D" },
      head()[1],
    ],
  ),
  batchnorm: classifier(
    [6, 6, 2],
    [
      { name: "b", type: "BatchNormalization", momentum: 0.9 },
      { name: "r", type: "Reshape", targetShape: [36, -1] },
      { name: "b2", type: "BatchNormalization", center: false },
      { name: "b3", type: "BatchNormalization", scale: false },
      { name: "drop", type: "Dropout", rate: 0.3 },
      ...head(),
    ],
  ),
  lstm: classifier(
    [7, 3],
    [
      { name: "l", type: "LSTM", units: 5, returnSequences: true },
      { name: "l2", type: "LSTM", units: 4, recurrentActivation: "hard_sigmoid" },
      head()[1],
    ],
  ),
  gru: classifier(
    [7, 3],
    [
      { name: "g", type: "GRU", units: 5, returnSequences: true },
      { name: "g2", type: "GRU", units: 4, resetAfter: true, activation: "swish" },
      head()[1],
    ],
  ),
  embedding: {
    kind: "graph",
    inputShape: [6],
    inputDtype: "int32",
    layers: [
      { name: "e", type: "Embedding", inputDim: 10, outputDim: 4 },
      { name: "g", type: "GlobalAveragePooling1D" },
      { name: "o", type: "Dense", units: 1, activation: "sigmoid" },
    ],
    loss: "binary_crossentropy",
    task: "binary",
    numClasses: 2,
  },
  merge: {
    kind: "graph",
    inputShape: [6],
    layers: [
      { name: "a", type: "Dense", units: 4, activation: "tanh" },
      { name: "b", type: "Dense", units: 4, activation: "sigmoid", inputs: ["input"] },
      { name: "s", type: "Add", inputs: ["a", "b"] },
      { name: "c", type: "Concatenate", inputs: ["s", "a"] },
      { name: "h", type: "Activation", activation: "hard_sigmoid" },
      { name: "o", type: "Dense", units: 2 },
    ],
    loss: "mse",
    task: "regression",
    numClasses: 2,
  },
  autoencoder: {
    kind: "graph",
    inputShape: [8],
    layers: [
      { name: "e", type: "Dense", units: 3, activation: "swish" },
      { name: "d", type: "Dense", units: 8 },
    ],
    loss: "mse",
    task: "reconstruction",
    numClasses: 8,
  },
};

/** Trains `spec` from seed-1 weights on the given backend; returns the weights, summary and an evaluation. */
async function trainOn(backend: "cpu" | "wasm", spec: GraphSpec, opts: Partial<TrainOptions> = {}) {
  assert.ok(await tf.setBackend(backend));
  const before = tf.memory().numTensors;
  const ds = data(spec, 8, 5);
  const m = new GenericModel(spec, initialWeights(spec, 1));
  try {
    const summary = await m.train(ds, { epochs: 2, batchSize: 4, lr: 0.1, seed: 3, ...opts });
    return { weights: m.getWeights(), summary, evaluation: m.evaluate(ds) };
  } finally {
    m.dispose();
    assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
    await tf.setBackend("wasm");
  }
}

function close(a: Float32Array, b: Float32Array, tol: number, what: string): void {
  assert.equal(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++)
    worst = Math.max(worst, Math.abs(a[i] - b[i]) / Math.max(1, Math.abs(b[i])));
  assert.ok(worst <= tol, `${what}: max relative difference ${worst} > ${tol}`);
}

for (const [name, spec] of Object.entries(CASES)) {
  test(`generic path on wasm matches cpu: ${name}`, async () => {
    const cpu = await trainOn("cpu", spec);
    const wasm = await trainOn("wasm", spec);
    close(wasm.weights, cpu.weights, 1e-4, name);
    // Training moved the weights (every layer learns something).
    const w0 = initialWeights(spec, 1);
    assert.ok(cpu.weights.some((v, i) => v !== w0[i]));
    assert.ok(Math.abs(wasm.summary.loss - cpu.summary.loss) < 1e-4, `${name}: loss`);
    assert.ok(Math.abs(wasm.evaluation.loss - cpu.evaluation.loss) < 1e-4, `${name}: evaluation`);
  });
}

test("optimizers (momentum, Nesterov, Adam) and FedProx on wasm match cpu", async () => {
  const spec = CASES.conv2d;
  const opts: OptimizerConfig[] = [
    { name: "momentum", momentum: 0.8 },
    { name: "momentum", nesterov: true },
    { name: "adam" },
  ];
  for (const optimizer of opts) {
    const cpu = await trainOn("cpu", spec, { optimizer, mu: 0.5, lr: 0.02 });
    const wasm = await trainOn("wasm", spec, { optimizer, mu: 0.5, lr: 0.02 });
    close(wasm.weights, cpu.weights, 1e-4, JSON.stringify(optimizer));
  }
});

test("Adam follows Kingma & Ba: one step moves every weight by about lr", async () => {
  const spec = CASES.dense;
  const ds = data(spec, 4, 1);
  const m = new GenericModel(spec, initialWeights(spec, 2));
  const w0 = m.getWeights();
  await m.train(ds, { epochs: 1, batchSize: 4, lr: 0.01, seed: 1, optimizer: { name: "adam" } });
  const w1 = m.getWeights();
  m.dispose();
  // Step t = 1: m̂ = g, v̂ = g², so |Δw| = lr·|g|/(|g| + ε) ≈ lr for every weight with a non-zero gradient.
  let moved = 0;
  for (let i = 0; i < w0.length; i++) {
    const d = Math.abs(w1[i] - w0[i]);
    assert.ok(d <= 0.01 + 1e-6, `weight ${i} moved ${d}`);
    if (d > 0.0099) moved++;
  }
  assert.ok(moved > w0.length / 2, `${moved} of ${w0.length} weights moved by ~lr`);
});

const fastGeneric: [string, PresetSpec][] = [
  ["cnn", defaultSpec("cnn", [28, 28, 1], 10) as PresetSpec],
  ["mlp", defaultSpec("mlp", [784], 10) as PresetSpec],
  ["cnn1d", defaultSpec("cnn1d", [64, 6], 5) as PresetSpec],
  ["autoencoder", defaultSpec("autoencoder", [784], 2) as PresetSpec],
];

for (const [kind, preset] of fastGeneric) {
  test(`fast path and generic path train a ${kind} to the same weights (SGD, momentum, FedProx)`, async () => {
    const graph = presetGraph(preset);
    assert.equal(modelPath(graph), "fast");
    const rng = new Rng(9);
    const n = 20;
    const d = size(preset.inputShape);
    const ds = makeDataset(
      new Float32Array(n * d).map(() => rng.next()),
      new Int32Array(n).map(() => rng.int(2)),
      preset.inputShape,
      Math.max(2, preset.numClasses),
    );
    const runs: Partial<TrainOptions>[] =
      kind === "cnn" || kind === "mlp"
        ? [
            {},
            { optimizer: { name: "momentum", momentum: 0.9 } },
            { optimizer: { name: "momentum", nesterov: true }, mu: 0.1 },
            { mu: 0.1 },
          ]
        : [{}, { optimizer: { name: "momentum" } }];
    for (const extra of runs) {
      const fast = await createModel(graph, 4);
      const generic = await createModel(graph, 4, { path: "generic" });
      assert.ok(!(generic instanceof Object.getPrototypeOf(fast).constructor));
      const opts: TrainOptions = { epochs: 2, batchSize: 10, lr: 0.05, seed: 2, ...extra };
      const a = await fast.train(ds, opts);
      const b = await generic.train(ds, opts);
      close(generic.getWeights(), fast.getWeights(), 1e-4, `${kind} ${JSON.stringify(extra)}`);
      assert.ok(
        Math.abs(a.loss - b.loss) < 1e-4 * Math.max(1, a.loss),
        `${kind}: loss ${a.loss} vs ${b.loss}`,
      );
      if (kind !== "autoencoder") assert.equal(a.accuracy, b.accuracy);
      const ea = fast.evaluate(ds);
      const eb = generic.evaluate(ds);
      assert.ok(Math.abs(ea.loss - eb.loss) < 1e-4 * Math.max(1, ea.loss));
      if (kind === "autoencoder") {
        assert.equal(ea.accuracy, eb.accuracy);
        assert.ok(ea.mae !== undefined && eb.mae !== undefined && Math.abs(ea.mae - eb.mae) < 1e-5);
      }
      fast.dispose();
      generic.dispose();
    }
  });
}

test("dispatch: presets and matching graphs take the fast path, others the generic one; Adam runs generic", async () => {
  const preset = defaultSpec("mlp", [784], 10) as PresetSpec;
  const other = CASES.batchnorm;
  assert.equal(modelPath(preset), "fast");
  assert.equal(modelPath(other), "generic");
  const g = await createModel(other, 1);
  assert.ok(g instanceof GenericModel);
  g.dispose();
  await assert.rejects(
    createModel(other, 1, { path: "fast" }),
    (e: unknown) => isFlotillaError(e) && e.code === "E_MODEL_SPEC",
  );
  // Adam on the fast path model = Adam on the generic path from the same weights.
  const small: PresetSpec = { kind: "mlp", inputShape: [6], numClasses: 3, hidden: [5] };
  const ds = data(presetGraph(small), 12, 3);
  const fast = await createModel(small, 2);
  const generic = await createModel(small, 2, { path: "generic" });
  const opts: TrainOptions = { epochs: 2, batchSize: 4, lr: 0.01, seed: 1, optimizer: { name: "adam" } };
  await fast.train(ds, opts);
  await fast.train(ds, opts);
  await generic.train(ds, opts);
  await generic.train(ds, opts);
  assert.deepEqual(fast.getWeights(), generic.getWeights());
  assert.equal(fast.layout.hash, modelLayout(small).hash);
  fast.dispose();
  generic.dispose();
  await assert.rejects(
    (async () => {
      const m = await createModel(small, 1);
      try {
        await m.train(ds, { ...opts, optimizer: { name: "rmsprop" } as unknown as OptimizerConfig });
      } finally {
        m.dispose();
      }
    })(),
    (e: unknown) => isFlotillaError(e) && e.code === "E_CONFIG_TRAIN",
  );
});

test("fused LSTM/GRU (recurrent.ts) train as tfjs-layers' cells (and the op-based reset-after GRU)", async () => {
  const variants: LayerSpec[] = [
    { name: "r", type: "LSTM", units: 4, returnSequences: true },
    {
      name: "r",
      type: "LSTM",
      units: 3,
      recurrentActivation: "hard_sigmoid",
      activation: "relu",
      unitForgetBias: false,
    },
    { name: "r", type: "GRU", units: 4 },
    { name: "r", type: "GRU", units: 3, returnSequences: true, recurrentActivation: "hard_sigmoid" },
    { name: "r", type: "GRU", units: 4, resetAfter: true },
    { name: "r", type: "GRU", units: 3, resetAfter: true, returnSequences: true, useBias: false },
    { name: "r", type: "LSTM", units: 3, useBias: false },
  ];
  for (const layer of variants) {
    const seq = (layer as { returnSequences?: boolean }).returnSequences === true;
    const spec = classifier(
      [6, 2],
      [layer, ...(seq ? [{ name: "g", type: "GlobalAveragePooling1D" } as LayerSpec] : []), head()[1]],
    );
    const ds = data(spec, 8, 11);
    const w0 = initialWeights(spec, 2).map((v, i) => v + 0.05 * Math.sin(i)); // non-zero biases
    const run = async (fusedRecurrent: boolean) => {
      const m = new GenericModel(spec, w0, { fusedRecurrent });
      const s = await m.train(ds, {
        epochs: 2,
        batchSize: 4,
        lr: 0.5,
        seed: 1,
        optimizer: { name: "momentum" },
      });
      const out = { w: m.getWeights(), loss: s.loss, p: m.predict(ds.x, ds.n) };
      m.dispose();
      return out;
    };
    const fused = await run(true);
    const ref = await run(false);
    close(fused.w, ref.w, 2e-5, JSON.stringify(layer));
    close(fused.p, ref.p, 2e-5, `${JSON.stringify(layer)} predict`);
    assert.ok(Math.abs(fused.loss - ref.loss) < 1e-5);
  }
});

test("dilated convolutions and reset-after GRU compute what TensorFlow defines", async () => {
  // Dilated Conv2D (a custom layer: tfjs has no gradient for dilation) against tf.conv2d's dilated forward pass.
  const conv: GraphSpec = {
    kind: "graph",
    inputShape: [7, 6, 2],
    layers: [
      { name: "c", type: "Conv2D", filters: 3, kernelSize: [3, 2], dilationRate: [2, 3], padding: "same" },
      { name: "f", type: "Flatten" },
    ],
    loss: "mse",
    task: "regression",
    numClasses: 7 * 6 * 3,
  };
  const w = initialWeights(conv, 3);
  w.fill(0.1, w.length - 3);
  const ds = data(conv, 2, 4);
  const m = new GenericModel(conv, w);
  const got = m.predict(ds.x, 2);
  m.dispose();
  const want = tf.tidy(() =>
    tf
      .add(
        tf.conv2d(
          tf.tensor4d(ds.x, [2, 7, 6, 2]),
          tf.tensor4d(w.subarray(0, 36), [3, 2, 2, 3]),
          1,
          "same",
          "NHWC",
          [2, 3],
        ),
        0.1,
      )
      .dataSync(),
  );
  close(got, want as Float32Array, 1e-5, "dilated conv2d");

  // GRU reset_after (Keras 2's default) against a direct JS evaluation of Keras's equations.
  const u = 3;
  const f = 2;
  const t = 4;
  const gru: GraphSpec = {
    kind: "graph",
    inputShape: [t, f],
    layers: [{ name: "g", type: "GRU", units: u, resetAfter: true }],
    loss: "mse",
    task: "regression",
    numClasses: u,
  };
  const gw = initialWeights(gru, 5).map((v, i) => v + 0.01 * (i % 7));
  const x = data(gru, 1, 6).x;
  const gm = new GenericModel(gru, gw);
  const out = gm.predict(x, 1);
  gm.dispose();
  const W = gw.subarray(0, f * 3 * u);
  const U = gw.subarray(f * 3 * u, f * 3 * u + u * 3 * u);
  const B = gw.subarray(f * 3 * u + u * 3 * u);
  const sig = (v: number) => 1 / (1 + Math.exp(-v));
  let h = new Array(u).fill(0);
  for (let s = 0; s < t; s++) {
    const xw = new Array(3 * u).fill(0).map((_, j) => B[j] + x[s * f] * W[j] + x[s * f + 1] * W[3 * u + j]);
    const hu = new Array(3 * u)
      .fill(0)
      .map((_, j) => B[3 * u + j] + h.reduce((a, hv, k) => a + hv * U[k * 3 * u + j], 0));
    h = h.map((hv, j) => {
      const z = sig(xw[j] + hu[j]);
      const r = sig(xw[u + j] + hu[u + j]);
      const cand = Math.tanh(xw[2 * u + j] + r * hu[2 * u + j]);
      return z * hv + (1 - z) * cand;
    });
  }
  close(out, Float32Array.from(h), 1e-5, "GRU reset_after");
});

test("BatchNormalization: moving statistics update in training, inference uses them", async () => {
  for (const extra of [{}, { center: false }]) {
    const spec: GraphSpec = {
      kind: "graph",
      inputShape: [2],
      layers: [{ name: "bn", type: "BatchNormalization", momentum: 0.5, ...extra }],
      loss: "mse",
      task: "regression",
      numClasses: 2,
    };
    const x = Float32Array.from([1, 10, 3, 20, 5, 30, 7, 40]);
    const ds = { ...makeDataset(x, new Int32Array(4), [2], 2), targets: new Float32Array(8), targetSize: 2 };
    const m = new GenericModel(spec, initialWeights(spec, 1));
    await m.train(ds, { epochs: 1, batchSize: 4, lr: 0, seed: 1 });
    const w = m.getWeights();
    const k = "center" in extra ? 2 : 4; // the moving mean follows gamma [and beta]
    // batch mean (4, 25), biased variance (5, 125): moving ← 0.5·moving + 0.5·batch.
    close(w.subarray(k, k + 4), Float32Array.from([2, 12.5, 3, 63]), 1e-6, "moving stats");
    const y = m.predict(Float32Array.from([2, 12.5]), 1);
    close(y, new Float32Array(2), 1e-6, "inference normalizes by the moving stats");
    m.dispose();
  }
});

test("BN policy local (FedBN): BN stays on the device, uploads carry the global BN values", async () => {
  const spec: GraphSpec = { ...CASES.batchnorm, bnPolicy: "local" };
  const ds = data(spec, 8, 2);
  const layout = modelLayout(spec);
  const bn = layout.entries.filter((e) => e.name.startsWith("b"));
  const global1 = initialWeights(spec, 7);
  const m = new GenericModel(spec, initialWeights(spec, 1));
  m.setWeights(global1);
  await m.train(ds, { epochs: 1, batchSize: 4, lr: 0.1, seed: 1 });
  const up = m.getWeights();
  for (const e of bn)
    assert.deepEqual(
      up.subarray(e.offset, e.offset + e.size),
      global1.subarray(e.offset, e.offset + e.size),
      e.name,
    );
  const dense = layout.entries.find((e) => e.name === "out/kernel");
  assert.ok(
    dense &&
      up.subarray(dense.offset, dense.offset + dense.size).some((v, i) => v !== global1[dense.offset + i]),
  );
  // The next round: the device keeps its own BN statistics over the new global model's.
  const global2 = initialWeights(spec, 8);
  m.setWeights(global2);
  const fresh = new GenericModel(spec, global2);
  assert.notDeepEqual(m.predict(ds.x, ds.n), fresh.predict(ds.x, ds.n));
  assert.deepEqual(m.getWeights(), global2);
  // A new model per round (as the trainer builds them) carries the device's BN through localState.
  const state = m.localState();
  assert.ok(state !== null);
  const next = new GenericModel(spec, initialWeights(spec, 1));
  assert.equal(next.localState(), null);
  next.restoreLocalState(state);
  next.setWeights(global2);
  assert.deepEqual(next.predict(ds.x, ds.n), m.predict(ds.x, ds.n));
  assert.deepEqual(next.getWeights(), global2);
  next.dispose();
  m.dispose();
  fresh.dispose();
  // Default "aggregate": the BN values travel.
  const agg = new GenericModel(CASES.batchnorm, global1);
  await agg.train(ds, { epochs: 1, batchSize: 4, lr: 0.1, seed: 1 });
  const moved = agg.getWeights();
  assert.ok(
    bn.some((e) => moved.subarray(e.offset, e.offset + e.size).some((v, i) => v !== global1[e.offset + i])),
  );
  agg.dispose();
});

test("metrics by task: binary AUC, regression and reconstruction MAE; regression needs targets", async () => {
  const bin = new GenericModel(CASES.embedding, initialWeights(CASES.embedding, 1));
  const e = bin.evaluate(data(CASES.embedding, 10, 1));
  assert.ok(e.auc !== undefined && e.auc >= 0 && e.auc <= 1 && Number.isFinite(e.accuracy));
  const p = bin.predict(data(CASES.embedding, 3, 1).x, 3);
  assert.ok(p.length === 3 && p.every((v) => v > 0 && v < 1));
  bin.dispose();
  const reg = new GenericModel(CASES.merge, initialWeights(CASES.merge, 1));
  const r = reg.evaluate(data(CASES.merge, 6, 1));
  assert.ok(r.mae !== undefined && r.mae > 0 && Number.isNaN(r.accuracy));
  const noTargets = makeDataset(new Float32Array(12), new Int32Array(2), [6], 2);
  await assert.rejects(
    reg.train(noTargets, { epochs: 1, batchSize: 2, lr: 0.1, seed: 1 }),
    (err: unknown) => isFlotillaError(err) && err.code === "E_DATA_SHAPE",
  );
  reg.dispose();
  const ae = new GenericModel(CASES.autoencoder, initialWeights(CASES.autoencoder, 1));
  const a = ae.evaluate(data(CASES.autoencoder, 10, 1));
  assert.ok(a.mae !== undefined && a.mae > 0 && a.accuracy >= 0 && a.accuracy <= 1);
  ae.dispose();
  // Mann–Whitney AUC, ties counting ½.
  assert.equal(rocAuc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 0.75);
  assert.equal(rocAuc([1, 1, 1, 1], [0, 1, 0, 1]), 0.5);
  assert.ok(Number.isNaN(rocAuc([1, 2], [1, 1])));
  // Token ids outside the embedding are refused.
  const badIds = makeDataset(new Float32Array(6).fill(12), new Int32Array(1), [6], 2);
  const em = new GenericModel(CASES.embedding, initialWeights(CASES.embedding, 1));
  assert.throws(
    () => em.evaluate(badIds),
    (err: unknown) => isFlotillaError(err) && err.code === "E_DATA_PARSE",
  );
  em.dispose();
});

test("training honours an abort signal and reports progress", async () => {
  const spec = CASES.lstm;
  const m = new GenericModel(spec, initialWeights(spec, 1));
  const ctl = new AbortController();
  let seen = 0;
  await assert.rejects(
    m.train(data(spec, 16, 1), {
      epochs: 3,
      batchSize: 4,
      lr: 0.1,
      seed: 1,
      abortSignal: ctl.signal,
      onProgress: (done) => {
        seen = done;
        if (done >= 8) ctl.abort();
      },
    }),
    (e: unknown) => isFlotillaError(e) && e.code === "E_ABORTED",
  );
  assert.equal(seen, 8);
  m.setWeights(m.getWeights()); // usable again after the abort
  m.dispose();
});
