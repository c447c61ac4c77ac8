import { test } from "@jest/globals";
import * as assert from "node:assert/strict";
import { isFlotillaError } from "../../../core/errors";
import { makeDataset, reshape, subset } from "../../../core/data/dataset";
import type { Dataset } from "../../../core/data/dataset";
import { loadMnist } from "../../../core/data/mnist";
import { Rng } from "../../../core/data/rng";
import { presetGraph } from "../../../core/engine/graph";
import type { GraphSpec } from "../../../core/engine/graph-spec";
import type { ModelSpec, PresetSpec } from "../../../core/engine/model-spec";
import {
  anomalyAccuracy as tfjsAnomalyAccuracy,
  createModel,
  initialWeights,
  modelLayout,
} from "../../../core/engine/models";
import { exportOnnx } from "../../../core/export/onnx";
import { anomalyAccuracy, OnnxModel } from "../../../core/export/onnx-runtime";
import { modelProtoType } from "../../../core/export/onnx-schema";

const MLP: ModelSpec = { kind: "mlp", inputShape: [784], numClasses: 10, hidden: [200, 200] };
const CNN: ModelSpec = {
  kind: "cnn",
  inputShape: [28, 28, 1],
  numClasses: 10,
  filters: [32, 64],
  kernelSize: 5,
  dense: 512,
};

/** Small specs for every kind, with odd sizes (floor pooling), even kernels (asymmetric 'same' pads) and
 *  multi-axis dense inputs. */
const SMALL: ModelSpec[] = [
  { kind: "mlp", inputShape: [4, 3], numClasses: 4, hidden: [9, 7] },
  { kind: "cnn", inputShape: [9, 7, 2], numClasses: 3, filters: [4, 5], kernelSize: 4, dense: 6 },
  { kind: "cnn", inputShape: [8, 8, 3], numClasses: 5, filters: [6], kernelSize: 3, dense: 8 },
  { kind: "cnn1d", inputShape: [17, 3], numClasses: 4, filters: [5, 6, 4], kernelSize: 4 },
  { kind: "cnn1d", inputShape: [16, 6], numClasses: 5, filters: [8, 8], kernelSize: 5 },
  { kind: "autoencoder", inputShape: [12], numClasses: 2, hidden: [6, 3] },
  { kind: "autoencoder", inputShape: [4, 5], numClasses: 2, hidden: [7] },
];

function randomData(shape: readonly number[], classes: number, n: number, seed: number): Dataset {
  const rng = new Rng(seed);
  const size = shape.reduce((a, b) => a * b, 1);
  const x = new Float32Array(n * size).map(() => rng.normal());
  const y = new Int32Array(n).map(() => rng.int(classes));
  return makeDataset(x, y, shape, classes);
}

/** Glorot kernels (initialWeights) with random, non-zero biases, so bias handling is checked too. */
function weightsFor(spec: ModelSpec, seed: number): Float32Array {
  const w = initialWeights(spec, seed);
  const rng = new Rng(seed + 1);
  for (const e of modelLayout(spec).entries) {
    if (e.name.endsWith("/bias")) for (let i = 0; i < e.size; i++) w[e.offset + i] = 0.1 * rng.normal();
  }
  return w;
}

function argmaxes(p: Float32Array, width: number): Int32Array {
  const n = p.length / width;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let b = 0;
    for (let k = 1; k < width; k++) if (p[i * width + k] > p[i * width + b]) b = k;
    out[i] = b;
  }
  return out;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function agreement(a: Int32Array, b: Int32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) s++;
  return s / a.length;
}

function throwsWith(f: () => unknown, code: string): void {
  assert.throws(f, (e: unknown) => isFlotillaError(e) && e.code === code && !e.message.includes("\n"));
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => isFlotillaError(e) && e.code === code && !e.message.includes("\n"));
}

/** fp32 export vs the tfjs model: outputs within 1e-4, identical argmax; returns the ORT outputs. */
async function checkFp32(spec: ModelSpec, weights: Float32Array, data: Dataset): Promise<void> {
  const model = await createModel(spec, 1);
  const onnx = await OnnxModel.load(exportOnnx(spec, weights), { threads: 1 });
  try {
    model.setWeights(weights);
    const want = model.predict!(data.x, data.n);
    const got = await onnx.predict(data.x, data.n, { batchSize: 64 });
    const width = spec.kind === "autoencoder" ? want.length / data.n : spec.numClasses;
    assert.equal(got.length, want.length, `${spec.kind}: output size`);
    const diff = maxAbsDiff(got, want);
    assert.ok(diff < 1e-4, `${spec.kind} [${spec.inputShape}]: max |ORT − tfjs| = ${diff}`);
    if (spec.kind !== "autoencoder") {
      assert.equal(agreement(argmaxes(got, width), argmaxes(want, width)), 1, `${spec.kind}: argmax`);
    }
    // evaluate() agrees with the tfjs evaluate() (accuracy; autoencoder: loss and anomaly accuracy).
    const ev = await onnx.evaluate(data);
    const tv = model.evaluate(data);
    assert.equal(ev.n, data.n);
    if (spec.kind === "autoencoder") {
      assert.ok(Math.abs(ev.loss - tv.loss) < 1e-5 * Math.max(1, tv.loss), `loss ${ev.loss} vs ${tv.loss}`);
      assert.equal(ev.errors?.length, data.n);
    } else {
      assert.ok(Math.abs(ev.loss - tv.loss) < 1e-4, `loss ${ev.loss} vs ${tv.loss}`);
      assert.equal(ev.predictions?.length, data.n);
    }
    if (!Number.isNaN(tv.accuracy)) assert.equal(ev.accuracy, tv.accuracy);
  } finally {
    model.dispose();
    await onnx.close();
  }
}

test("fp32 export matches the tfjs forward pass: every kind, small specs", async () => {
  for (const [i, spec] of SMALL.entries()) {
    const data = randomData(spec.inputShape, spec.kind === "autoencoder" ? 2 : spec.numClasses, 200, 100 + i);
    await checkFp32(spec, weightsFor(spec, 10 + i), data);
  }
});

test("fp32 export matches the tfjs forward pass: McMahan mlp and cnn on 300 MNIST digits", async () => {
  const test300 = subset(
    loadMnist().test,
    Array.from({ length: 300 }, (_, i) => i),
  );
  await checkFp32(MLP, weightsFor(MLP, 3), test300);
  await checkFp32(CNN, weightsFor(CNN, 4), reshape(test300, [28, 28, 1]));
});

test("int8 export: ≥3.5x smaller, argmax agrees with fp32 on most digits for a trained mlp", async () => {
  const { train, test: testSet } = loadMnist();
  const model = await createModel(MLP, 1);
  let w: Float32Array;
  try {
    await model.train(
      subset(
        train,
        Array.from({ length: 4000 }, (_, i) => i),
      ),
      {
        epochs: 1,
        batchSize: 10,
        lr: 0.05,
        seed: 1,
      },
    );
    w = model.getWeights();
  } finally {
    model.dispose();
  }
  const fp32 = exportOnnx(MLP, w);
  const int8 = exportOnnx(MLP, w, { quantize: "int8" });
  assert.ok(fp32.byteLength / int8.byteLength >= 3.5, `ratio ${fp32.byteLength / int8.byteLength}`);
  const data = subset(
    testSet,
    Array.from({ length: 500 }, (_, i) => i),
  );
  const a = await OnnxModel.load(fp32, { threads: 1 });
  const b = await OnnxModel.load(int8, { threads: 1 });
  try {
    const ea = await a.evaluate(data);
    const eb = await b.evaluate(data);
    const agree = agreement(ea.predictions!, eb.predictions!);
    assert.ok(agree >= 0.97, `int8 agrees with fp32 on ${agree}`);
    assert.ok(ea.accuracy > 0.85, `fp32 accuracy ${ea.accuracy}`);
    assert.ok(
      Math.abs(ea.accuracy - eb.accuracy) <= 0.02,
      `accuracy fp32 ${ea.accuracy} int8 ${eb.accuracy}`,
    );
  } finally {
    await a.close();
    await b.close();
  }
});

test("int8 export of every kind and form loads and stays close to fp32", async () => {
  const cnnW = weightsFor(CNN, 5);
  assert.ok(exportOnnx(CNN, cnnW).byteLength / exportOnnx(CNN, cnnW, { quantize: "int8" }).byteLength >= 3.5);
  for (const [i, spec] of SMALL.entries()) {
    const w = weightsFor(spec, 20 + i);
    const data = randomData(spec.inputShape, 2, 64, 200 + i);
    const ref = await OnnxModel.load(exportOnnx(spec, w));
    const want = await ref.predict(data.x, data.n);
    await ref.close();
    for (const int8Form of ["mixed", "integer", "qdq"] as const) {
      const m = await OnnxModel.load(exportOnnx(spec, w, { quantize: "int8", int8Form }), { threads: 1 });
      const got = await m.predict(data.x, data.n);
      await m.close();
      const scale = Math.max(...want.map(Math.abs));
      const diff = maxAbsDiff(got, want);
      assert.ok(diff < 0.1 * Math.max(1, scale), `${spec.kind} ${int8Form}: max diff ${diff}`);
    }
  }
});

test("the ONNX protobuf decodes back with the expected graph", () => {
  const type = modelProtoType();
  const decode = (bytes: Uint8Array) =>
    type.toObject(type.decode(bytes), { longs: Number, bytes: Array, defaults: true }) as {
      ir_version: number;
      opset_import: { domain: string; version: number }[];
      producer_name: string;
      metadata_props: { key: string; value: string }[];
      graph: {
        name: string;
        node: { op_type: string; input: string[]; output: string[] }[];
        initializer: { name: string; dims: number[]; data_type: number; raw_data: number[] }[];
        input: {
          name: string;
          type: { tensor_type: { elem_type: number; shape: { dim: Record<string, unknown>[] } } };
        }[];
        output: { name: string; type: { tensor_type: { shape: { dim: Record<string, unknown>[] } } } }[];
      };
    };
  const w = weightsFor(MLP, 1);
  const m = decode(exportOnnx(MLP, w, { name: "job-7" }));
  assert.equal(m.ir_version, 8);
  assert.deepEqual(
    m.opset_import.map((o) => [o.domain, o.version]),
    [["", 17]],
  );
  assert.equal(m.producer_name, "flotilla");
  assert.equal(m.graph.name, "job-7");
  assert.deepEqual(
    m.graph.node.map((n) => n.op_type),
    ["Gemm", "Relu", "Gemm", "Relu", "Gemm", "Softmax"],
  );
  assert.equal(m.graph.input[0].name, "input");
  assert.deepEqual(
    m.graph.input[0].type.tensor_type.shape.dim.map((d) => d.dim_param || d.dim_value),
    ["N", 784],
  );
  assert.equal(m.graph.input[0].type.tensor_type.elem_type, 1);
  assert.equal(m.graph.output[0].name, "probabilities");
  assert.deepEqual(
    m.graph.output[0].type.tensor_type.shape.dim.map((d) => d.dim_param || d.dim_value),
    ["N", 10],
  );
  const k0 = m.graph.initializer.find((t) => t.name === "dense_0/kernel")!;
  assert.deepEqual(k0.dims, [784, 200]);
  assert.equal(k0.data_type, 1);
  const back = new Float32Array(new Uint8Array(k0.raw_data).buffer);
  assert.deepEqual(back, w.subarray(0, 784 * 200));
  const meta = Object.fromEntries(m.metadata_props.map((p) => [p.key, p.value]));
  assert.equal(meta["flotilla.layout_hash"], modelLayout(MLP).hash);
  assert.deepEqual(JSON.parse(meta["flotilla.spec"]), MLP);
  assert.equal(meta["flotilla.quantization"], "none");

  const q = decode(exportOnnx(MLP, w, { quantize: "int8" }));
  const ops = q.graph.node.map((n) => n.op_type);
  assert.equal(ops.filter((o) => o === "DynamicQuantizeLinear").length, 3);
  assert.equal(ops.filter((o) => o === "MatMulInteger").length, 3);
  assert.ok(!ops.includes("Gemm"));
  const k0q = q.graph.initializer.find((t) => t.name === "dense_0/kernel_quantized")!;
  assert.equal(k0q.data_type, 3); // INT8
  assert.deepEqual(k0q.dims, [784, 200]);
  assert.equal(k0q.raw_data.length, 784 * 200);
  assert.ok(
    q.graph.initializer.every((t) => t.data_type !== 1 || t.dims.length === 1),
    "only 1-D float tensors",
  );

  const c = decode(exportOnnx(CNN, weightsFor(CNN, 2)));
  assert.deepEqual(
    c.graph.node.map((n) => n.op_type),
    [
      "Transpose",
      "Conv",
      "Relu",
      "MaxPool",
      "Conv",
      "Relu",
      "MaxPool",
      "Flatten",
      "Gemm",
      "Relu",
      "Gemm",
      "Softmax",
    ],
  );
  assert.deepEqual(c.graph.initializer.find((t) => t.name === "conv_1/kernel")!.dims, [64, 32, 5, 5]);
  const cq = decode(exportOnnx(CNN, weightsFor(CNN, 2), { quantize: "int8" }));
  assert.equal(cq.graph.initializer.find((t) => t.name === "conv_1/kernel_quantized")!.data_type, 3);

  const ae = decode(exportOnnx(SMALL[5], weightsFor(SMALL[5], 1)));
  assert.equal(ae.graph.output[0].name, "reconstruction");
  const c1 = decode(exportOnnx(SMALL[3], weightsFor(SMALL[3], 1)));
  assert.ok(c1.graph.node.some((n) => n.op_type === "GlobalAveragePool"));
});

test("exportOnnx errors are one-line E_EXPORT_* codes", () => {
  const w = initialWeights(SMALL[0], 1);
  throwsWith(() => exportOnnx(SMALL[0], w.subarray(1)), "E_EXPORT_WEIGHTS");
  throwsWith(() => exportOnnx(SMALL[0], Array.from(w) as unknown as Float32Array), "E_EXPORT_WEIGHTS");
  const nan = w.slice();
  nan[5] = NaN;
  throwsWith(() => exportOnnx(SMALL[0], nan), "E_EXPORT_WEIGHTS");
  throwsWith(() => exportOnnx({ ...SMALL[0], inputShape: [0] }, w), "E_EXPORT_WEIGHTS");
  throwsWith(() => exportOnnx({ ...SMALL[0], kind: "rnn" } as unknown as ModelSpec, w), "E_EXPORT_FORMAT");
  throwsWith(() => exportOnnx(SMALL[0], w, { quantize: "int4" as "int8" }), "E_EXPORT_FORMAT");
  throwsWith(
    () => exportOnnx(SMALL[0], w, { quantize: "int8", int8Form: "fast" as "qdq" }),
    "E_EXPORT_FORMAT",
  );
});

test("OnnxModel errors are one-line E_ONNX_* codes", async () => {
  await rejectsWith(OnnxModel.load(new Uint8Array(0)), "E_ONNX_LOAD");
  await rejectsWith(OnnxModel.load(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])), "E_ONNX_LOAD");
  await rejectsWith(
    OnnxModel.load(exportOnnx(SMALL[0], initialWeights(SMALL[0], 1)), { threads: -1 }),
    "E_ONNX_LOAD",
  );
  const m = await OnnxModel.load(exportOnnx(SMALL[0], initialWeights(SMALL[0], 1)));
  assert.deepEqual(m.inputShape, [4, 3]);
  assert.equal(m.task, "classifier");
  await rejectsWith(m.predict(new Float32Array(11), 1), "E_ONNX_RUN");
  await rejectsWith(m.evaluate(randomData([5], 4, 3, 1)), "E_ONNX_RUN");
  assert.deepEqual(await m.predict(new Float32Array(0), 0), new Float32Array(0));
  await m.close();
  await m.close();
  await rejectsWith(m.predict(new Float32Array(12), 1), "E_ONNX_RUN");
});

test("anomalyAccuracy of onnx-runtime.ts is the rule of models.ts", () => {
  const rng = new Rng(9);
  for (let t = 0; t < 20; t++) {
    const n = 5 + rng.int(50);
    const errors = Array.from({ length: n }, () => rng.next());
    const labels = Array.from({ length: n }, () => rng.int(3));
    const a = anomalyAccuracy(errors, labels);
    const b = tfjsAnomalyAccuracy(errors, labels);
    assert.ok(Object.is(a, b), `${a} vs ${b}`);
  }
  assert.ok(Number.isNaN(anomalyAccuracy([1, 2], [1, 2])));
});

test("a preset exports through its preset graph: the same ONNX graph as presetGraph(preset)", () => {
  const type = modelProtoType();
  const graphOf = (bytes: Uint8Array) =>
    JSON.stringify(
      (
        type.toObject(type.decode(bytes), { bytes: Array }) as {
          graph: { node: unknown; initializer: unknown };
        }
      ).graph.node,
    ) +
    JSON.stringify(
      (type.toObject(type.decode(bytes), { bytes: Array }) as { graph: { initializer: unknown } }).graph
        .initializer,
    );
  for (const [i, spec] of [...SMALL, MLP].entries()) {
    const w = weightsFor(spec, 30 + i);
    const g = presetGraph(spec as PresetSpec);
    assert.equal(modelLayout(g).hash, modelLayout(spec).hash, `${spec.kind}: layout`);
    for (const opts of [{}, { quantize: "int8" as const }]) {
      assert.equal(
        graphOf(exportOnnx(spec, w, opts)),
        graphOf(exportOnnx(g, w, opts)),
        `${spec.kind} ${JSON.stringify(opts)}`,
      );
    }
  }
});

test("binary and regression graphs: outputs `probability` and `prediction`, evaluated by OnnxModel", async () => {
  const binary: GraphSpec = {
    kind: "graph",
    inputShape: [6],
    layers: [
      { name: "h", type: "Dense", units: 5, activation: "relu" },
      { name: "p", type: "Dense", units: 1, activation: "sigmoid" },
    ],
    loss: "binary_crossentropy",
    task: "binary",
    numClasses: 2,
  };
  const regression: GraphSpec = {
    ...binary,
    layers: [{ name: "r", type: "Dense", units: 2 }],
    loss: "mse",
    task: "regression",
  };
  const data = randomData([6], 2, 50, 4);
  const wb = initialWeights(binary, 1);
  const mb = await OnnxModel.load(exportOnnx(binary, wb));
  assert.equal(mb.task, "binary");
  assert.equal(mb.outputName, "probability");
  const pb = await mb.predict(data.x, data.n);
  const eb = await mb.evaluate(data);
  await mb.close();
  let correct = 0;
  let bce = 0;
  for (let i = 0; i < data.n; i++) {
    if ((pb[i] > 0.5 ? 1 : 0) === data.y[i]) correct++;
    bce -= Math.log(data.y[i] === 1 ? pb[i] : 1 - pb[i]);
  }
  assert.equal(eb.accuracy, correct / data.n);
  assert.ok(Math.abs(eb.loss - bce / data.n) < 1e-6);

  const wr = initialWeights({ ...regression, numClasses: 2 }, 2);
  const mr = await OnnxModel.load(exportOnnx({ ...regression, numClasses: 2 }, wr));
  assert.equal(mr.task, "regression");
  const pr = await mr.predict(data.x, data.n);
  const targets = new Float32Array(pr.length).map((_, i) => pr[i] + (i % 2 === 0 ? 0.5 : -0.5));
  const er = await mr.evaluate({ ...data, targets, targetSize: 2 });
  assert.ok(Number.isNaN(er.accuracy));
  assert.ok(Math.abs(er.loss - 0.25) < 1e-6 && Math.abs(er.mae! - 0.5) < 1e-6, `${er.loss} ${er.mae}`);
  await rejectsWith(mr.evaluate(data), "E_ONNX_RUN");
  await mr.close();
});

test("graph export errors are one-line E_EXPORT_* codes naming the layer", () => {
  const g: GraphSpec = {
    kind: "graph",
    inputShape: [6],
    layers: [{ name: "odd", type: "SimpleRNN", units: 3 } as unknown as GraphSpec["layers"][number]],
    loss: "mse",
    task: "regression",
    numClasses: 3,
  };
  assert.throws(
    () => exportOnnx(g, new Float32Array(0)),
    (e: unknown) =>
      isFlotillaError(e) && e.code === "E_EXPORT_LAYER" && /odd/.test(e.message) && !e.message.includes("\n"),
  );
  const dense: GraphSpec = { ...g, layers: [{ name: "d", type: "Dense", units: 3 }] };
  const w = initialWeights(dense, 1);
  throwsWith(() => exportOnnx(dense, w.subarray(1)), "E_EXPORT_WEIGHTS");
  throwsWith(() => exportOnnx({ ...dense, numClasses: 4 }, w), "E_EXPORT_WEIGHTS");
  throwsWith(() => exportOnnx(dense, w, { int8Form: "x" as "qdq" }), "E_EXPORT_FORMAT");
});
