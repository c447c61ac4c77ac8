/**
 * ONNX export of layer graphs (graph-spec.ts) against an independent tfjs-layers model of the same graph and weights
 * (tfjs-graph.ts, cpu backend): every layer type and option on small graphs, then whole models. fp32 outputs must
 * match tightly; int8 models (every form) must stay close and agree on the predicted class.
 */
import { test } from "@jest/globals";
import * as assert from "node:assert/strict";
import { isFlotillaError } from "../../../core/errors";
import { makeDataset, subset } from "../../../core/data/dataset";
import { loadMnist } from "../../../core/data/mnist";
import { Rng } from "../../../core/data/rng";
import { generateSensors } from "../../../core/data/sensors";
import type { GraphSpec, LayerSpec } from "../../../core/engine/graph-spec";
import { modelLayout } from "../../../core/engine/plan";
import { exportOnnx, type ExportOptions } from "../../../core/export/onnx";
import { OnnxModel } from "../../../core/export/onnx-runtime";
import { modelProtoType } from "../../../core/export/onnx-schema";
import { c2, graph, headed, LAYER_GRAPHS, randomInput } from "./graphs";
import { gruResetAfter, reference, referencePredict, train, type Reference } from "./tfjs-graph";

/** Exports the reference's graph and weights, after checking graph.ts lays the weights out as tfjs-layers does. */
function exportRef(
  g: GraphSpec,
  ref: Reference,
  opts: ExportOptions = {},
  weights = ref.weights,
): Uint8Array {
  assert.deepEqual(
    modelLayout(g).entries.map((e) => [e.name, e.shape]),
    ref.layout.entries.map((e) => [e.name, e.shape]),
  );
  return exportOnnx(g, weights, opts);
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function argmaxes(p: Float32Array, width: number): Int32Array {
  const out = new Int32Array(p.length / width);
  for (let i = 0; i < out.length; i++) {
    let b = 0;
    for (let k = 1; k < width; k++) if (p[i * width + k] > p[i * width + b]) b = k;
    out[i] = b;
  }
  return out;
}

async function runOnnx(bytes: Uint8Array, x: Float32Array, n: number): Promise<Float32Array> {
  const m = await OnnxModel.load(bytes, { threads: 1 });
  try {
    return await m.predict(x, n, { batchSize: 64 });
  } finally {
    await m.close();
  }
}

/** fp32 ORT vs tfjs: max |diff| relative to the output scale; returns it. */
async function checkFp32(
  g: GraphSpec,
  seed: number,
  n = 24,
  tol = 1e-4,
): Promise<{ diff: number; ref: Reference; x: Float32Array; want: Float32Array }> {
  const ref = await reference(g, seed);
  const x = randomInput(g, n, seed + 1);
  const want = referencePredict(ref, g, x, n);
  const got = await runOnnx(exportRef(g, ref), x, n);
  const scale = Math.max(1, ...want.map(Math.abs));
  const diff = maxAbsDiff(got, want);
  assert.ok(
    diff <= tol * scale,
    `${g.name ?? g.layers.map((l) => l.type).join("-")}: max |ORT − tfjs| = ${diff}`,
  );
  return { diff, ref, x, want };
}

test("fp32 export of every layer type and option matches tfjs-layers", async () => {
  for (const [i, g] of LAYER_GRAPHS.entries()) await checkFp32(await headed(g), 1000 + i);
});

test("GRU reset_after (Keras's default; tfjs-layers has none) matches Keras's GRUCell equations", async () => {
  // The reference model is the reset-before GRU of the same shapes; its weights are re-read with bias [2, 3u].
  for (const recurrentActivation of ["sigmoid", "hard_sigmoid"] as const) {
    const g = graph([7, 3], [{ name: "r", type: "GRU", units: 5, resetAfter: true, recurrentActivation }], {
      numClasses: 5,
    });
    const rng = new Rng(5);
    const kernel = new Float32Array(3 * 15).map(() => 0.5 * rng.normal());
    const recurrent = new Float32Array(5 * 15).map(() => 0.5 * rng.normal());
    const bias = new Float32Array(2 * 15).map(() => 0.3 * rng.normal());
    const weights = new Float32Array([...kernel, ...recurrent, ...bias]);
    assert.deepEqual(
      modelLayout(g).entries.map((e) => [e.name, e.shape]),
      [
        ["r/kernel", [3, 15]],
        ["r/recurrent_kernel", [5, 15]],
        ["r/bias", [2, 15]],
      ],
    );
    const x = randomInput(g, 20, 6);
    const want = gruResetAfter(x, 20, 7, 3, 5, { kernel, recurrent, bias }, recurrentActivation);
    const got = await runOnnx(exportOnnx(g, weights), x, 20);
    const diff = maxAbsDiff(got, want);
    assert.ok(diff < 1e-5, `GRU reset_after ${recurrentActivation}: max diff ${diff}`);
  }
});

test("int8 export of every layer graph loads and stays close to fp32 in every form", async () => {
  for (const [i, g0] of LAYER_GRAPHS.entries()) {
    const g = await headed(g0);
    const ref = await reference(g, 2000 + i);
    const x = randomInput(g, 16, i);
    const want = await runOnnx(exportRef(g, ref), x, 16);
    for (const int8Form of ["mixed", "integer", "qdq"] as const) {
      const got = await runOnnx(exportRef(g, ref, { quantize: "int8", int8Form }), x, 16);
      const diff = maxAbsDiff(got, want);
      assert.ok(
        diff < 0.1 * Math.max(1, ...want.map(Math.abs)),
        `${g.layers.map((l) => l.type)} ${int8Form}: ${diff}`,
      );
    }
  }
});

test("transposes are minimal: a conv stack stays channels-first, stacked LSTMs stay time-major", async () => {
  const type = modelProtoType();
  const ops = (g: GraphSpec, ref: Reference) =>
    (
      type.toObject(type.decode(exportRef(g, ref))) as { graph: { node: { op_type: string }[] } }
    ).graph.node.map((n) => n.op_type);
  const cnn = graph(
    [12, 12, 3],
    [
      c2("a", { padding: "same", activation: "relu" }),
      { name: "bn", type: "BatchNormalization" },
      { name: "p", type: "MaxPooling2D", poolSize: [2, 2] },
      { name: "dw", type: "DepthwiseConv2D", kernelSize: [3, 3], padding: "same" },
      { name: "s", type: "Add", inputs: ["p", "dw"] },
      { name: "f", type: "Flatten" },
      { name: "d", type: "Dense", units: 3, activation: "softmax" },
    ],
    { task: "classification", loss: "sparse_categorical_crossentropy", numClasses: 3 },
  );
  const o1 = ops(cnn, await reference(cnn, 1));
  assert.equal(o1.filter((o) => o === "Transpose").length, 1, o1.join(" "));
  const rnn = graph(
    [9, 4],
    [
      { name: "l1", type: "LSTM", units: 6, returnSequences: true },
      { name: "l2", type: "GRU", units: 6, returnSequences: true },
      { name: "l3", type: "LSTM", units: 5 },
      { name: "d", type: "Dense", units: 3, activation: "softmax" },
    ],
    { task: "classification", loss: "sparse_categorical_crossentropy", numClasses: 3 },
  );
  const o2 = ops(rnn, await reference(rnn, 2));
  assert.equal(o2.filter((o) => o === "Transpose").length, 1, o2.join(" "));
  await checkFp32(cnn, 1);
  await checkFp32(rnn, 2);
});

test("layers without an ONNX mapping are refused with a one-line E_EXPORT_LAYER naming the layer", async () => {
  const g = graph([7, 3], [{ name: "rnn7", type: "LSTM", units: 4, recurrentActivation: "swish" }], {
    numClasses: 4,
  });
  const ref = await reference({ ...g, layers: [{ name: "rnn7", type: "LSTM", units: 4 }] }, 1);
  assert.throws(
    () => exportRef(g, ref),
    (e: unknown) =>
      isFlotillaError(e) &&
      e.code === "E_EXPORT_LAYER" &&
      /rnn7/.test(e.message) &&
      !e.message.includes("\n"),
  );
  const odd = graph([7, 3], [{ name: "x1", type: "Conv3D" } as unknown as LayerSpec], { numClasses: 4 });
  assert.throws(
    () => exportOnnx(odd, new Float32Array(0)),
    (e: unknown) => isFlotillaError(e) && e.code === "E_EXPORT_LAYER" && /x1.*Conv3D/.test(e.message),
  );
});

interface WholeCase {
  readonly graph: GraphSpec;
  readonly train: { x: Float32Array; y: Int32Array; epochs: number } | null;
  readonly test: { x: Float32Array; y: Int32Array; n: number };
  /** Least int8 agreement with fp32 (argmax, or p > 0.5 for binary). */
  readonly agreement: number;
}

function sensorsData(windowLength: number): {
  train: { x: Float32Array; y: Int32Array };
  test: { x: Float32Array; y: Int32Array; n: number };
} {
  const s = generateSensors({
    devices: 2,
    samplesPerDevice: 200,
    seed: 7,
    windowLength,
    testSamples: 200,
    labelSkew: 0,
  });
  const x = new Float32Array([...s.devices[0].x, ...s.devices[1].x]);
  const y = new Int32Array([...s.devices[0].y, ...s.devices[1].y]);
  return { train: { x, y }, test: { x: s.test.x, y: s.test.y, n: s.test.n } };
}

function wholeCases(): WholeCase[] {
  const mnist = loadMnist();
  const idx = (k: number, from = 0) => Array.from({ length: k }, (_, i) => from + i);
  const mtest = subset(mnist.test, idx(100));
  const sensors = sensorsData(16);
  const cls = { loss: "sparse_categorical_crossentropy", task: "classification" } as const;
  // Token sequences whose label is whether token 3 occurs more often than token 4.
  const rng = new Rng(11);
  const tokens = (n: number) => {
    const x = new Float32Array(n * 20).map(() => rng.int(30));
    const y = new Int32Array(n).map((_, i) => {
      let c = 0;
      for (let t = 0; t < 20; t++) c += x[i * 20 + t] === 3 ? 1 : x[i * 20 + t] === 4 ? -1 : 0;
      return c > 0 ? 1 : 0;
    });
    return { x, y, n };
  };
  const tokTrain = tokens(400);
  return [
    {
      graph: graph(
        [28, 28, 1],
        [
          c2("conv_0", { filters: 32, kernelSize: [5, 5], padding: "same", activation: "relu" }),
          { name: "pool_0", type: "MaxPooling2D", poolSize: [2, 2] },
          c2("conv_1", { filters: 64, kernelSize: [5, 5], padding: "same", activation: "relu" }),
          { name: "pool_1", type: "MaxPooling2D", poolSize: [2, 2] },
          { name: "flatten", type: "Flatten" },
          { name: "dense_0", type: "Dense", units: 512, activation: "relu" },
          { name: "dense_1", type: "Dense", units: 10, activation: "softmax" },
        ],
        { ...cls, numClasses: 10, name: "McMahan cnn" },
      ),
      train: null,
      test: { x: mtest.x, y: mtest.y, n: mtest.n },
      // Untrained (tfjs-layers on cpu trains a 1.6M-parameter cnn too slowly for a unit test): near-uniform
      // probabilities, so int8 agreement is lower than a trained model's (test/core/export/onnx.test.ts trains one).
      agreement: 0.9,
    },
    {
      graph: graph(
        [16, 6],
        [
          { name: "lstm_0", type: "LSTM", units: 16, returnSequences: true },
          { name: "lstm_1", type: "LSTM", units: 12 },
          { name: "dense", type: "Dense", units: 5, activation: "softmax" },
        ],
        { ...cls, numClasses: 5, name: "LSTM sensors" },
      ),
      train: { ...sensors.train, epochs: 2 },
      test: sensors.test,
      agreement: 0.97,
    },
    {
      graph: graph(
        [16, 6],
        [
          { name: "conv", type: "Conv1D", filters: 12, kernelSize: 5, padding: "same", activation: "relu" },
          { name: "pool", type: "MaxPooling1D", poolSize: 2 },
          { name: "gru", type: "GRU", units: 16, recurrentActivation: "sigmoid" },
          { name: "drop", type: "Dropout", rate: 0.2 },
          { name: "dense", type: "Dense", units: 5, activation: "softmax" },
        ],
        { ...cls, numClasses: 5, name: "GRU sensors" },
      ),
      train: { ...sensors.train, epochs: 2 },
      test: sensors.test,
      agreement: 0.97,
    },
    {
      graph: graph(
        [16, 16, 3],
        [
          c2("a", { filters: 8, padding: "same", activation: "relu" }),
          { name: "bn", type: "BatchNormalization" },
          {
            name: "dw",
            type: "DepthwiseConv2D",
            kernelSize: [3, 3],
            padding: "same",
            depthMultiplier: 2,
            activation: "relu",
          },
          {
            name: "sep",
            type: "SeparableConv2D",
            filters: 16,
            kernelSize: [3, 3],
            padding: "same",
            inputs: ["bn"],
          },
          { name: "sum", type: "Add", inputs: ["dw", "sep"] },
          { name: "cat", type: "Concatenate", inputs: ["bn", "sum"] },
          { name: "avg", type: "AveragePooling2D", poolSize: [3, 3], strides: [2, 2], padding: "same" },
          { name: "gap", type: "GlobalAveragePooling2D" },
          { name: "out", type: "Dense", units: 10, activation: "softmax" },
        ],
        { ...cls, numClasses: 10, name: "functional" },
      ),
      train: null,
      test: { ...randomClassData([16, 16, 3], 200, 3), n: 200 },
      agreement: 0.9,
    },
    {
      graph: graph(
        [20],
        [
          { name: "emb", type: "Embedding", inputDim: 30, outputDim: 8 },
          { name: "gap", type: "GlobalAveragePooling1D" },
          { name: "hidden", type: "Dense", units: 8, activation: "relu" },
          { name: "out", type: "Dense", units: 1, activation: "sigmoid" },
        ],
        {
          inputDtype: "int32",
          loss: "binary_crossentropy",
          task: "binary",
          numClasses: 2,
          name: "Embedding binary",
        },
      ),
      train: { ...tokTrain, epochs: 5 },
      test: tokens(300),
      agreement: 0.97,
    },
  ];
}

function randomClassData(shape: number[], n: number, seed: number): { x: Float32Array; y: Int32Array } {
  const rng = new Rng(seed);
  const size = shape.reduce((a, b) => a * b, 1);
  return {
    x: new Float32Array(n * size).map(() => rng.normal()),
    y: new Int32Array(n).map(() => rng.int(10)),
  };
}

function classes(out: Float32Array, n: number): Int32Array {
  const width = out.length / n;
  return width === 1 ? Int32Array.from(out, (p) => (p > 0.5 ? 1 : 0)) : argmaxes(out, width);
}

function agreement(a: Int32Array, b: Int32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) s++;
  return s / a.length;
}

test("whole graphs: McMahan cnn, LSTM and GRU sensor models, functional graph, Embedding model (fp32 and int8)", async () => {
  const figures: string[] = [];
  for (const [i, c] of wholeCases().entries()) {
    const g = c.graph;
    const ref = await reference(g, 300 + i);
    const w = c.train ? await train(ref, g, c.train.x, c.train.y, c.train.epochs) : ref.weights;
    const want = referencePredict(ref, g, c.test.x, c.test.n);
    const fp32 = exportRef(g, ref, {}, w);
    const m = await OnnxModel.load(fp32, { threads: 1 });
    const got = await m.predict(c.test.x, c.test.n, { batchSize: 64 });
    const ev = await m.evaluate(makeDataset(c.test.x, c.test.y, g.inputShape, g.numClasses));
    await m.close();
    const diff = maxAbsDiff(got, want);
    assert.ok(diff < 1e-4, `${g.name}: fp32 max |ORT − tfjs| = ${diff}`);
    const ref32 = classes(got, c.test.n);
    assert.equal(agreement(ref32, classes(want, c.test.n)), 1, `${g.name}: fp32 classes`);
    const line = [
      `${g.name} (${ref.layout.totalSize} params): fp32 max diff ${diff.toExponential(1)}, accuracy ${ev.accuracy.toFixed(3)}`,
    ];
    for (const int8Form of ["mixed", "integer", "qdq"] as const) {
      const bytes = exportRef(g, ref, { quantize: "int8", int8Form }, w);
      const q = await runOnnx(bytes, c.test.x, c.test.n);
      const agree = agreement(classes(q, c.test.n), ref32);
      assert.ok(agree >= c.agreement, `${g.name} int8 ${int8Form}: agreement ${agree}`);
      line.push(
        `${int8Form} ${(100 * agree).toFixed(1)}% (${(fp32.byteLength / bytes.byteLength).toFixed(2)}x)`,
      );
    }
    figures.push(line.join(", "));
  }
  if (process.env.FLOTILLA_ONNX_FIGURES) console.log(figures.join("\n"));
});
