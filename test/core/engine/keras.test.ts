/**
 * Keras / tfjs Layers import and export (core/engine/keras.ts) against TensorFlow.js itself: the fixtures of
 * scripts/make-keras-fixtures.ts (what tfjs model.save() writes) and a hand-written Keras 3 model.json.
 * - every fixture imports to the graph and layout the docs describe (layout names `<layer>/<weight>`, Keras shapes);
 * - the imported graph and weights written back as model.json + weights.bin (kerasModelJson) load in
 *   tf.loadLayersModel and give the same outputs as tfjs's own load of the original files (cpu backend);
 * - everything the graph cannot express is refused with its code and the layer's name.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-cpu";
import { Rng } from "../../../core/data/rng";
import {
  importKeras,
  kerasGraph,
  kerasModelJson,
  kerasWeightsBin,
  readKerasModel,
  type ImportedModel,
} from "../../../core/engine/keras";
import { modelLayout } from "../../../core/engine/plan";
import { defaultSpec } from "../../../core/engine/model-spec";
import { checkWarmStart, loadModelDir, loadModelSource, saveModelDir } from "../../../core/export/model-dir";
import { parseOptimizer, validateOptimizer } from "../../../core/engine/optimizer-config";
import { initBackend, silenceTfjs } from "../../../core/engine/backend";
import { createModel } from "../../../core/engine/models";

silenceTfjs();

const FIXTURES = path.resolve(__dirname, "..", "..", "..", "..", "test", "fixtures", "keras");
const fixture = (name: string) => path.join(FIXTURES, name);
const readJson = (name: string) =>
  JSON.parse(fs.readFileSync(path.join(fixture(name), "model.json"), "utf8")) as Record<string, unknown>;

/** tf.loadLayersModel of a model.json and the shards next to it (tfjs's own reading of the files). */
async function tfjsLoad(dir: string): Promise<tf.LayersModel> {
  const json = JSON.parse(fs.readFileSync(path.join(dir, "model.json"), "utf8")) as {
    modelTopology: object;
    trainingConfig?: tf.io.TrainingConfig;
    weightsManifest: tf.io.WeightsManifestConfig;
  };
  const specs = json.weightsManifest.flatMap((g) => g.weights);
  const bufs = json.weightsManifest.flatMap((g) => g.paths.map((p) => fs.readFileSync(path.join(dir, p))));
  const all = Buffer.concat(bufs);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  return tf.loadLayersModel(
    tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs: specs, weightData }),
  );
}

/** Writes an imported model back as model.json + weights.bin in a fresh directory. */
function writeBack(m: ImportedModel): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-keras-"));
  fs.writeFileSync(path.join(dir, "model.json"), JSON.stringify(kerasModelJson(m.spec)));
  fs.writeFileSync(path.join(dir, "weights.bin"), kerasWeightsBin(m.weights));
  return dir;
}

function sampleInput(shape: readonly number[], n: number, seed: number, vocab = 0): tf.Tensor {
  const rng = new Rng(seed);
  const size = shape.reduce((a, b) => a * b, 1);
  const x = new Float32Array(n * size);
  for (let i = 0; i < x.length; i++) x[i] = vocab > 0 ? rng.int(vocab) : 2 * rng.next() - 1;
  return tf.tensor(x, [n, ...shape]);
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const TFJS_FIXTURES = [
  "mnist-cnn",
  "sensors-lstm",
  "sensors-gru",
  "functional",
  "conv1d-binary",
  "embedding",
];

test("every fixture imports to the documented graph: layer order, Keras weight names and shapes, task", async () => {
  const expect: Record<string, { task: string; loss: string; classes: number; params: number }> = {
    "mnist-cnn": {
      task: "classification",
      loss: "sparse_categorical_crossentropy",
      classes: 10,
      params: 1_663_370,
    },
    "sensors-lstm": {
      task: "classification",
      loss: "sparse_categorical_crossentropy",
      classes: 5,
      params: 5157,
    },
    "sensors-gru": {
      task: "classification",
      loss: "sparse_categorical_crossentropy",
      classes: 5,
      params: 3909,
    },
    functional: { task: "classification", loss: "categorical_crossentropy", classes: 4, params: 435 },
    "conv1d-binary": { task: "binary", loss: "binary_crossentropy", classes: 2, params: 421 },
    embedding: { task: "classification", loss: "sparse_categorical_crossentropy", classes: 3, params: 427 },
    keras3: { task: "classification", loss: "sparse_categorical_crossentropy", classes: 3, params: 187 },
  };
  await tf.setBackend("cpu");
  for (const [name, e] of Object.entries(expect)) {
    const m = readKerasModel(fixture(name));
    assert.equal(m.spec.kind, "graph");
    assert.equal(m.spec.task, e.task, name);
    assert.equal(m.spec.loss, e.loss, name);
    assert.equal(m.spec.numClasses, e.classes, name);
    assert.equal(m.weights.length, e.params, name);
    const layout = modelLayout(m.spec);
    assert.equal(layout.totalSize, e.params);
    if (name === "keras3") continue;
    // The layout is the model's weights in layer order, each with its tfjs name and Keras shape.
    const tm = await tfjsLoad(fixture(name));
    const byName = new Map(tm.weights.map((w) => [w.originalName, w]));
    assert.equal(layout.entries.length, tm.weights.length, name);
    for (const entry of layout.entries) {
      const w = byName.get(entry.name);
      assert.ok(w, `${name}: ${entry.name} is a weight of the tfjs model`);
      assert.deepEqual(entry.shape, w.shape, entry.name);
      const values = m.weights.subarray(entry.offset, entry.offset + entry.size);
      assert.deepEqual(values, w.read().dataSync() as Float32Array, entry.name);
    }
    tm.dispose();
  }
  // The graph's layers are the Keras layers in order, with the sequential ones unconnected (previous layer).
  const cnn = readKerasModel(fixture("mnist-cnn")).spec;
  assert.deepEqual(
    cnn.layers.map((l) => l.type),
    ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"],
  );
  assert.deepEqual(cnn.inputShape, [28, 28, 1]);
  assert.deepEqual(cnn.layers[0], {
    type: "Conv2D",
    name: cnn.layers[0].name,
    filters: 32,
    kernelSize: [5, 5],
    strides: [1, 1],
    padding: "same",
    dilationRate: [1, 1],
    activation: "relu",
    useBias: true,
  });
  const emb = readKerasModel(fixture("embedding")).spec;
  assert.equal(emb.inputDtype, "int32");
  const fn = readKerasModel(fixture("functional")).spec;
  assert.deepEqual(fn.layers.find((l) => l.name === "cat")?.inputs, ["bn", "dw"]);
  assert.deepEqual(fn.layers.find((l) => l.name === "sum")?.inputs, ["conv", "sep"]);
  assert.deepEqual(fn.layers.find((l) => l.name === "conv")?.inputs, ["input"]);
});

test("imported graphs written back as model.json + weights.bin give tfjs's outputs of the original files", async () => {
  await tf.setBackend("cpu");
  for (const name of TFJS_FIXTURES) {
    const m = readKerasModel(fixture(name));
    const original = await tfjsLoad(fixture(name));
    const dir = writeBack(m);
    const back = await tfjsLoad(dir);
    const first = m.spec.layers[0];
    const x = sampleInput(m.spec.inputShape, 8, 7, first.type === "Embedding" ? first.inputDim : 0);
    const a = (original.predict(x) as tf.Tensor).dataSync() as Float32Array;
    const b = (back.predict(x) as tf.Tensor).dataSync() as Float32Array;
    assert.ok(maxAbsDiff(a, b) === 0, `${name}: outputs differ by ${maxAbsDiff(a, b)}`);
    // Imported again, the written model is the same graph and the same weights.
    const again = readKerasModel(dir);
    assert.deepEqual(again.weights, m.weights, name);
    assert.equal(modelLayout(again.spec).hash, modelLayout(m.spec).hash, name);
    tf.dispose([x, original, back] as unknown as tf.Tensor[]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("imported models give the outputs of tf.loadLayersModel on the same files (Flotilla on wasm, tfjs on cpu)", async () => {
  // tfjs's outputs first (cpu backend), then the imported graphs through createModel on the wasm backend.
  await tf.setBackend("cpu");
  const cases: { name: string; m: ImportedModel; x: Float32Array; n: number; want: Float32Array }[] = [];
  for (const name of TFJS_FIXTURES) {
    const m = readKerasModel(fixture(name));
    const first = m.spec.layers[0];
    const n = 6;
    const xt = sampleInput(m.spec.inputShape, n, 11, first.type === "Embedding" ? first.inputDim : 0);
    const tm = await tfjsLoad(fixture(name));
    const want = (tm.predict(xt) as tf.Tensor).dataSync() as Float32Array;
    cases.push({ name, m, x: xt.dataSync() as Float32Array, n, want });
    tm.dispose();
    xt.dispose();
  }
  await initBackend();
  for (const c of cases) {
    const model = await createModel(c.m.spec, 1);
    model.setWeights(c.m.weights);
    const got = model.predict!(c.x, c.n);
    const d = maxAbsDiff(got, c.want);
    assert.ok(d < 1e-4, `${c.name}: outputs differ by ${d}`);
    assert.deepEqual(model.getWeights(), c.m.weights, `${c.name}: weights round-trip`);
    model.dispose();
  }
});

test("a Keras 3 model.json (tensorflowjs_converter of Keras 3: model_config, __keras_tensor__ inbound nodes) imports", async () => {
  await tf.setBackend("cpu");
  const m = readKerasModel(fixture("keras3"));
  assert.deepEqual(
    m.spec.layers.map((l) => [l.type, l.name, l.inputs]),
    [
      ["Dense", "dense", ["input"]],
      ["Dense", "dense_1", ["dense"]],
      ["Add", "add", ["dense", "dense_1"]],
      ["BatchNormalization", "batch_normalization", ["add"]],
      ["Dropout", "dropout", ["batch_normalization"]],
      ["Dense", "dense_2", ["dropout"]],
    ],
  );
  // from_logits: the output stays linear (logits), the loss is computed from them.
  assert.equal((m.spec.layers[5] as { activation?: string }).activation, "linear");
  assert.equal(kerasGraph(readJson("keras3")).style, "keras3");
  // Reference: the same network by hand from the shard's values (manifest order = layout order here).
  const w = m.weights;
  const at = (name: string) => {
    const e = modelLayout(m.spec).entries.find((x) => x.name === name)!;
    return w.subarray(e.offset, e.offset + e.size);
  };
  const dense = (x: number[], k: Float32Array, b: Float32Array, nout: number) =>
    Array.from({ length: nout }, (_, j) => x.reduce((s, v, i) => s + v * k[i * nout + j], b[j]));
  const x = [0.3, -1.2, 0.5, 2, -0.7, 0.1];
  const h = dense(x, at("dense/kernel"), at("dense/bias"), 8).map((v) => Math.max(0, v));
  const h1 = dense(h, at("dense_1/kernel"), at("dense_1/bias"), 8);
  const sum = h.map((v, i) => v + h1[i]);
  const [g, be, mm, mv] = ["gamma", "beta", "moving_mean", "moving_variance"].map((k) =>
    at(`batch_normalization/${k}`),
  );
  const bn = sum.map((v, i) => ((v - mm[i]) / Math.sqrt(mv[i] + 0.001)) * g[i] + be[i]);
  const logits = dense(bn, at("dense_2/kernel"), at("dense_2/bias"), 3);
  const dir = writeBack(m);
  const back = await tfjsLoad(dir);
  const out = (back.predict(tf.tensor([x])) as tf.Tensor).dataSync();
  logits.forEach((v, i) => assert.ok(Math.abs(v - out[i]) < 1e-5, `logit ${i}: ${v} vs ${out[i]}`));
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A small functional Keras 2 model.json to mutate: input [4] → Dense(3, relu) 'd1' → Dense(2, softmax) 'd2'. */
function tiny(): { json: Record<string, unknown>; shard: Uint8Array } {
  const layer = (name: string, cls: string, config: object, from: string) => ({
    name,
    class_name: cls,
    config: { name, trainable: true, ...config },
    inbound_nodes: [[[from, 0, 0, {}]]],
  });
  const json = {
    format: "layers-model",
    modelTopology: {
      class_name: "Model",
      config: {
        name: "tiny",
        layers: [
          {
            name: "in",
            class_name: "InputLayer",
            config: { batch_input_shape: [null, 4], dtype: "float32", name: "in" },
            inbound_nodes: [],
          },
          layer(
            "d1",
            "Dense",
            { units: 3, activation: "relu", use_bias: true, kernel_regularizer: null },
            "in",
          ),
          layer("d2", "Dense", { units: 2, activation: "softmax", use_bias: true }, "d1"),
        ],
        input_layers: [["in", 0, 0]],
        output_layers: [["d2", 0, 0]],
      },
    },
    weightsManifest: [
      {
        paths: ["w.bin"],
        weights: [
          { name: "d1/kernel", shape: [4, 3], dtype: "float32" },
          { name: "d1/bias", shape: [3], dtype: "float32" },
          { name: "d2/kernel", shape: [3, 2], dtype: "float32" },
          { name: "d2/bias", shape: [2], dtype: "float32" },
        ],
      },
    ],
  };
  return { json, shard: new Uint8Array(new Float32Array(12 + 3 + 6 + 2).map((_, i) => i / 10).buffer) };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a JSON document mutated in place
type AnyJson = any;

function mutate(f: (json: AnyJson) => void): { json: unknown; read: (p: string) => Uint8Array | undefined } {
  const t = tiny();
  f(t.json);
  return { json: t.json, read: (p) => (p === "w.bin" ? t.shard : undefined) };
}

const d1 = (j: AnyJson) => j.modelTopology.config.layers[1].config;

test("what a graph cannot express is refused with a coded one-line error naming the layer", () => {
  const cases: [string, (j: AnyJson) => void, string, RegExp][] = [
    [
      "a regularizer",
      (j) => (d1(j).kernel_regularizer = { class_name: "L2", config: { l2: 0.01 } }),
      "E_MODEL_LAYER",
      /'d1' \(Dense\).*kernel_regularizer/,
    ],
    ["a frozen layer", (j) => (d1(j).trainable = false), "E_MODEL_LAYER", /'d1'.*trainable/],
    ["an unknown activation", (j) => (d1(j).activation = "gelu"), "E_MODEL_LAYER", /'d1'.*gelu/],
    ["an unknown option", (j) => (d1(j).lora_rank = 4), "E_MODEL_LAYER", /'d1'.*lora_rank/],
    ["channels_first", (j) => (d1(j).data_format = "channels_first"), "E_MODEL_LAYER", /channels_last only/],
    [
      "an unknown layer class",
      (j) => (j.modelTopology.config.layers[1].class_name = "LayerNormalization"),
      "E_MODEL_LAYER",
      /'d1' \(LayerNormalization\)/,
    ],
    [
      "two outputs",
      (j) => j.modelTopology.config.output_layers.push(["d1", 0, 0]),
      "E_MODEL_IMPORT",
      /2 outputs/,
    ],
    [
      "a shared layer",
      (j) => j.modelTopology.config.layers[2].inbound_nodes.push([["d1", 0, 0, {}]]),
      "E_MODEL_IMPORT",
      /'d2' is shared/,
    ],
    [
      "a dangling layer",
      (j) =>
        j.modelTopology.config.layers.push({
          name: "x",
          class_name: "Dense",
          config: { name: "x", units: 1 },
          inbound_nodes: [[["d1", 0, 0, {}]]],
        }),
      "E_MODEL_IMPORT",
      /'x' does not lead/,
    ],
    [
      "a quantized weight",
      (j) => (j.weightsManifest[0].weights[0].quantization = { dtype: "uint8", scale: 1, min: 0 }),
      "E_MODEL_WEIGHTS",
      /quantized/,
    ],
    [
      "a float16 weight",
      (j) => (j.weightsManifest[0].weights[3].dtype = "float16"),
      "E_MODEL_WEIGHTS",
      /float16/,
    ],
    [
      "a missing weight",
      (j) => (j.weightsManifest[0].weights[3].name = "other/bias"),
      "E_MODEL_WEIGHTS",
      /d2\/bias is not in the weights manifest/,
    ],
    [
      "a misshapen weight",
      (j) => (j.weightsManifest[0].weights[1].shape = [1, 3]),
      "E_MODEL_WEIGHTS",
      /d1\/bias has shape \[1, 3\]/,
    ],
    [
      "a short shard",
      (j) => j.weightsManifest[0].weights.push({ name: "d2/extra", shape: [4], dtype: "float32" }),
      "E_MODEL_WEIGHTS",
      /hold 92 bytes/,
    ],
    [
      "a missing shard",
      (j) => (j.weightsManifest[0].paths = ["nope.bin"]),
      "E_MODEL_WEIGHTS",
      /nope\.bin' is missing/,
    ],
    [
      "an unsupported loss",
      (j) => (j.trainingConfig = { loss: "mean_absolute_error" }),
      "E_MODEL_LOSS",
      /mean_absolute_error/,
    ],
    [
      "a loss that does not fit the output",
      (j) => (j.trainingConfig = { loss: "binary_crossentropy" }),
      "E_MODEL_LOSS",
      /needs a sigmoid output/,
    ],
    [
      "a graph model",
      (j) => (j.modelTopology = { node: [], library: {} }),
      "E_MODEL_IMPORT",
      /not a Keras model/,
    ],
  ];
  for (const [what, f, code, message] of cases) {
    const { json, read } = mutate(f);
    assert.throws(
      () => importKeras(json, read),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, code, `${what}: ${e.message}`);
        assert.match(e.message, message, what);
        assert.ok(!e.message.includes("\n"), what);
        return true;
      },
      what,
    );
  }
  // The fixture with a GlobalMaxPooling2D layer.
  assert.throws(() => readKerasModel(fixture("unsupported")), {
    code: "E_MODEL_LAYER",
    message: /layer 'global_max' \(GlobalMaxPooling2D\)/,
  });
});

test("RNN and BatchNormalization options: reset_after GRUs import, cell dropout and stateful RNNs are refused", () => {
  const rnn = (cls: string, config: object) => ({
    format: "layers-model",
    modelTopology: {
      class_name: "Sequential",
      config: {
        name: "s",
        layers: [
          { class_name: "InputLayer", config: { batch_input_shape: [null, 5, 2], name: "in" } },
          { class_name: cls, config: { name: "r", units: 3, ...config } },
          { class_name: "Dense", config: { name: "o", units: 2, activation: "softmax" } },
        ],
      },
    },
  });
  const g = kerasGraph(rnn("GRU", { reset_after: true })).spec;
  assert.deepEqual(g.layers[0], {
    type: "GRU",
    name: "r",
    units: 3,
    activation: "tanh",
    recurrentActivation: "sigmoid",
    returnSequences: false,
    useBias: true,
    resetAfter: true,
  });
  assert.deepEqual(
    modelLayout(g)
      .entries.filter((e) => e.name.startsWith("r/"))
      .map((e) => [e.name, e.shape]),
    [
      ["r/kernel", [2, 9]],
      ["r/recurrent_kernel", [3, 9]],
      ["r/bias", [2, 9]],
    ],
  );
  assert.throws(() => kerasGraph(rnn("LSTM", { recurrent_dropout: 0.2 })), {
    code: "E_MODEL_LAYER",
    message: /'r' \(LSTM\).*recurrent_dropout/,
  });
  assert.throws(() => kerasGraph(rnn("LSTM", { stateful: true })), {
    code: "E_MODEL_LAYER",
    message: /stateful/,
  });
  assert.throws(() => kerasGraph(rnn("GRU", { return_state: true })), {
    code: "E_MODEL_LAYER",
    message: /return_state/,
  });
  // Keras 2's resolved BN axis (the last one, counted with the batch axis) is accepted; another axis is not.
  const bn = (axis: unknown) => ({
    format: "layers-model",
    modelTopology: {
      class_name: "Sequential",
      config: [
        {
          class_name: "BatchNormalization",
          config: { name: "bn", axis, batch_input_shape: [null, 4, 4, 3] },
        },
        { class_name: "Flatten", config: { name: "f" } },
        { class_name: "Dense", config: { name: "o", units: 2, activation: "softmax" } },
      ],
    },
  });
  assert.equal(kerasGraph(bn([3])).spec.layers[0].type, "BatchNormalization");
  assert.throws(() => kerasGraph(bn(1)), { code: "E_MODEL_LAYER", message: /'bn'.*axis 1/ });
});

test("the loss: training config, else the option, else the output activation (mse: reconstruction or regression)", () => {
  const seq = (units: number, activation: string, extra: object = {}) => ({
    modelTopology: {
      class_name: "Sequential",
      config: {
        layers: [
          {
            class_name: "Dense",
            config: { name: "h", units: 4, activation: "relu", batch_input_shape: [null, 4] },
          },
          { class_name: "Dense", config: { name: "o", units, activation } },
        ],
      },
    },
    ...extra,
  });
  const s = (j: unknown, o = {}) => kerasGraph(j, o).spec;
  assert.deepEqual(
    [s(seq(3, "softmax")).loss, s(seq(3, "softmax")).task],
    ["sparse_categorical_crossentropy", "classification"],
  );
  assert.deepEqual(
    [s(seq(1, "sigmoid")).loss, s(seq(1, "sigmoid")).task, s(seq(1, "sigmoid")).numClasses],
    ["binary_crossentropy", "binary", 2],
  );
  assert.deepEqual([s(seq(4, "linear")).loss, s(seq(4, "linear")).task], ["mse", "reconstruction"]);
  assert.deepEqual([s(seq(2, "linear")).task, s(seq(2, "linear")).numClasses], ["regression", 2]);
  assert.equal(s(seq(4, "linear"), { task: "regression" }).task, "regression");
  assert.equal(
    s(seq(3, "softmax", { trainingConfig: { loss: "categorical_crossentropy" } })).loss,
    "categorical_crossentropy",
  );
  assert.equal(
    s(seq(3, "softmax", { trainingConfig: { loss: "categorical_crossentropy" } }), {
      loss: "sparse_categorical_crossentropy",
    }).loss,
    "sparse_categorical_crossentropy",
  );
  // A linear output compiled from_logits is a classifier's logits.
  const logits = seq(3, "linear", {
    modelTopology: {
      training_config: {
        loss: { class_name: "SparseCategoricalCrossentropy", config: { from_logits: true } },
      },
      class_name: "Sequential",
      config: (seq(3, "linear").modelTopology as { config: unknown }).config,
    },
  });
  assert.deepEqual([s(logits).task, s(logits).numClasses], ["classification", 3]);
  assert.throws(() => s(seq(3, "softmax"), { loss: "binary_crossentropy" }), { code: "E_MODEL_LOSS" });
});

test("a saved model directory holds a tfjs-loadable model.json (graphs and presets) and loads as a model source", async () => {
  await tf.setBackend("cpu");
  const m = readKerasModel(fixture("functional"));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-keras-dir-"));
  try {
    saveModelDir(path.join(dir, "graph"), m.spec, m.weights);
    const tm = await tfjsLoad(path.join(dir, "graph"));
    const x = sampleInput(m.spec.inputShape, 4, 3);
    const a = (tm.predict(x) as tf.Tensor).dataSync() as Float32Array;
    const b = ((await tfjsLoad(fixture("functional"))).predict(x) as tf.Tensor).dataSync() as Float32Array;
    assert.equal(maxAbsDiff(a, b), 0);
    const src = loadModelSource(path.join(dir, "graph"));
    assert.equal(src.format, "model-dir");
    assert.deepEqual(src.weights, m.weights);
    assert.equal(loadModelSource(fixture("functional")).format, "keras");
    assert.equal(loadModelSource(path.join(fixture("functional"), "model.json")).format, "keras");
    // A preset whose graph has its layout gets a model.json too.
    const mlp = defaultSpec("mlp", [784], 10);
    const w = new Float32Array(modelLayout(mlp).totalSize).map((_, i) => Math.sin(i));
    saveModelDir(path.join(dir, "mlp"), mlp, w);
    assert.deepEqual(loadModelDir(path.join(dir, "mlp")).weights, w);
    const pm = await tfjsLoad(path.join(dir, "mlp"));
    assert.equal(pm.countParams(), w.length);
    const x784 = sampleInput([784], 2, 5);
    const out = (pm.predict(x784) as tf.Tensor).dataSync();
    assert.equal(out.length, 20);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a warm start must have the job model's layout (E_MODEL_INIT names the first difference)", () => {
  const m = readKerasModel(fixture("sensors-lstm"));
  assert.equal(checkWarmStart(m.spec, m, "x"), m.weights);
  const gru = readKerasModel(fixture("sensors-gru"));
  assert.throws(() => checkWarmStart(m.spec, gru, "--init-model gru"), {
    code: "E_MODEL_INIT",
    message: /--init-model gru: its layout .* does not match .*tensor 0/,
  });
  // The imported McMahan cnn and the built-in cnn preset are the same network (other tensor names).
  const cnn = readKerasModel(fixture("mnist-cnn"));
  const preset = defaultSpec("cnn", [28, 28, 1], 10);
  assert.equal(checkWarmStart(preset, cnn, "x"), cnn.weights);
  assert.throws(() => checkWarmStart(defaultSpec("cnn", [28, 28, 1], 9), cnn, "x"), { code: "E_MODEL_INIT" });
  assert.throws(() => checkWarmStart(m.spec, { spec: m.spec, weights: m.weights.subarray(1) }, "x"), {
    code: "E_MODEL_INIT",
  });
});

test("--optimizer and a fit config's optimizer parse to OptimizerConfig; anything else is E_CONFIG_OPTIMIZER", () => {
  assert.deepEqual(parseOptimizer("sgd"), { name: "sgd" });
  assert.deepEqual(parseOptimizer("momentum"), { name: "momentum", momentum: 0.9 });
  assert.deepEqual(parseOptimizer("momentum:0.5"), { name: "momentum", momentum: 0.5 });
  assert.deepEqual(parseOptimizer("Adam"), { name: "adam" });
  for (const bad of ["rmsprop", "momentum:1", "momentum:x", "momentum:", "adam:0.9", "sgd:1"]) {
    assert.throws(() => parseOptimizer(bad), { code: "E_CONFIG_OPTIMIZER" }, bad);
  }
  assert.deepEqual(validateOptimizer({ name: "adam", beta1: 0.8 }), { name: "adam", beta1: 0.8 });
  assert.deepEqual(validateOptimizer({ name: "momentum", nesterov: true }), {
    name: "momentum",
    momentum: 0.9,
    nesterov: true,
  });
  for (const bad of [{ name: "sgd", lr: 1 }, { name: "adam", momentum: 0.9 }, { name: "x" }, 3, null]) {
    assert.throws(() => validateOptimizer(bad), { code: "E_CONFIG_OPTIMIZER" }, JSON.stringify(bad));
  }
});
