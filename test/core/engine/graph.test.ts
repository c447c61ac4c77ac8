import { test } from "@jest/globals";
import * as assert from "node:assert/strict";
import { isFlotillaError } from "../../../core/errors";
import type { GraphSpec, LayerSpec } from "../../../core/engine/graph-spec";
import {
  analyzeGraph,
  bnLocalStart,
  bnMask,
  graphTensors,
  matchPreset,
  presetGraph,
  validateGraph,
  withBnFrom,
} from "../../../core/engine/graph";
import { defaultSpec, validateSpec, type ModelSpec, type PresetSpec } from "../../../core/engine/model-spec";
import { countParams, initialWeights, modelLayout } from "../../../core/engine/plan";

const presets: PresetSpec[] = [
  defaultSpec("mlp", [784], 10) as PresetSpec,
  defaultSpec("cnn", [28, 28, 1], 10) as PresetSpec,
  defaultSpec("cnn1d", [64, 6], 5) as PresetSpec,
  defaultSpec("autoencoder", [784], 2) as PresetSpec,
  { kind: "mlp", inputShape: [8, 8, 1], numClasses: 3, hidden: [5] },
  { kind: "cnn", inputShape: [12, 10, 2], numClasses: 4, filters: [3, 5, 6], kernelSize: 3, dense: 7 },
  { kind: "cnn1d", inputShape: [20, 3], numClasses: 2, filters: [4], kernelSize: 3 },
  { kind: "autoencoder", inputShape: [30], numClasses: 2, hidden: [9, 5, 2] },
];

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(isFlotillaError(e), `not a FlotillaError: ${String(e)}`);
    return `${e.code}: ${e.message}`;
  }
  return "no error";
}

const graph = (layers: LayerSpec[], rest: Partial<GraphSpec> = {}): GraphSpec => ({
  kind: "graph",
  inputShape: [8, 8, 3],
  layers,
  loss: "sparse_categorical_crossentropy",
  task: "classification",
  numClasses: 4,
  ...rest,
});

test("a preset's graph has the preset's layout (names, shapes, order, hash) and initial weights", () => {
  for (const p of presets) {
    const g = presetGraph(p);
    validateGraph(g);
    assert.deepEqual(modelLayout(g), modelLayout(p), p.kind);
    assert.equal(countParams(g), countParams(p));
    assert.deepEqual(initialWeights(g, 7), initialWeights(p, 7), `${p.kind} initial weights`);
  }
  assert.equal(countParams(presetGraph(presets[1])), 1_663_370);
});

test("matchPreset recognises each preset's graph", () => {
  for (const p of presets) {
    assert.deepEqual(matchPreset(presetGraph(p)), p);
  }
});

test("matchPreset: names may differ and Activation layers fold in; anything else is no match", () => {
  const renamed: GraphSpec = {
    kind: "graph",
    inputShape: [28, 28, 1],
    layers: [
      { name: "c1", type: "Conv2D", filters: 32, kernelSize: [5, 5], padding: "same" },
      { name: "a1", type: "Activation", activation: "relu" },
      { name: "p1", type: "MaxPooling2D", poolSize: [2, 2], strides: [2, 2] },
      { name: "c2", type: "Conv2D", filters: 64, kernelSize: [5, 5], padding: "same", activation: "relu" },
      { name: "p2", type: "MaxPooling2D", poolSize: [2, 2] },
      { name: "f", type: "Flatten" },
      { name: "d1", type: "Dense", units: 512, activation: "relu" },
      { name: "out", type: "Dense", units: 10 },
      { name: "sm", type: "Activation", activation: "softmax" },
    ],
    loss: "categorical_crossentropy",
    task: "classification",
    numClasses: 10,
  };
  assert.deepEqual(matchPreset(renamed), presets[1]);
  const shapes = (s: ModelSpec) => modelLayout(s).entries.map((e) => e.shape);
  assert.deepEqual(shapes(renamed), shapes(presets[1]));
  assert.equal(modelLayout(renamed).entries[0].name, "c1/kernel");
  // Dropout, BN, other strides or a functional edge: not the fast path.
  const withDropout = {
    ...renamed,
    layers: [
      ...renamed.layers.slice(0, 6),
      { name: "dr", type: "Dropout", rate: 0.5 } as LayerSpec,
      ...renamed.layers.slice(6),
    ],
  };
  assert.equal(matchPreset(withDropout), null);
  const valid = {
    ...renamed,
    layers: renamed.layers.map((l) => (l.name === "c2" ? { ...l, padding: "valid" } : l)) as LayerSpec[],
  };
  assert.equal(matchPreset(valid), null);
  const mlpNoFlatten = graph([{ name: "d", type: "Dense", units: 4, activation: "softmax" }]);
  // Dense on a rank-3 input acts on the last axis, not like the mlp: and here the output is then not [4].
  assert.match(
    code(() => matchPreset(mlpNoFlatten)),
    /^E_MODEL_SHAPE: the output is \[8,8,4\]/,
  );
  const residual = graph(
    [
      { name: "f", type: "Flatten" },
      { name: "a", type: "Dense", units: 6, activation: "relu" },
      { name: "b", type: "Dense", units: 6, activation: "relu" },
      { name: "sum", type: "Add", inputs: ["a", "b"] },
      { name: "o", type: "Dense", units: 4, activation: "softmax" },
    ],
    { inputShape: [6] },
  );
  assert.equal(matchPreset(residual), null);
});

test("an unknown layer type is refused with E_MODEL_LAYER naming the layer and its type", () => {
  const g = graph([
    { name: "f", type: "Flatten" },
    { name: "norm_1", type: "LayerNormalization" } as unknown as LayerSpec,
    { name: "o", type: "Dense", units: 4, activation: "softmax" },
  ]);
  const msg = code(() => validateSpec(g));
  assert.match(msg, /^E_MODEL_LAYER: layer 'norm_1' has type "LayerNormalization"/);
});

test("bad options give E_MODEL_SPEC, shapes that do not fit E_MODEL_SHAPE", () => {
  const head: LayerSpec[] = [
    { name: "g", type: "GlobalAveragePooling2D" },
    { name: "o", type: "Dense", units: 4, activation: "softmax" },
  ];
  assert.match(
    code(() =>
      validateGraph(graph([{ name: "c", type: "Conv2D", filters: 0, kernelSize: [3, 3] }, ...head])),
    ),
    /^E_MODEL_SPEC: layer 'c': filters/,
  );
  assert.match(
    code(() =>
      validateGraph(graph([{ name: "c", type: "Conv2D", filters: 2, kernelSize: [9, 9] }, ...head])),
    ),
    /^E_MODEL_SHAPE: layer 'c'/,
  );
  assert.match(
    code(() =>
      validateGraph(
        graph([
          { name: "a", type: "Conv2D", filters: 2, kernelSize: [3, 3], padding: "same" },
          { name: "b", type: "Conv2D", filters: 3, kernelSize: [3, 3], padding: "same", inputs: ["input"] },
          { name: "s", type: "Add", inputs: ["a", "b"] },
          ...head,
        ]),
      ),
    ),
    /^E_MODEL_SHAPE: layer 's': Add needs inputs of one shape/,
  );
  assert.match(
    code(() => validateGraph(graph([{ name: "d", type: "Dropout", rate: 1 }, ...head]))),
    /^E_MODEL_SPEC: layer 'd': rate/,
  );
  assert.match(
    code(() => validateGraph(graph([{ name: "x", type: "Flatten", inputs: ["nope"] }, head[1]]))),
    /^E_MODEL_SPEC: layer 'x': input 'nope'/,
  );
  assert.match(
    code(() =>
      validateGraph(graph([head[0], { name: "o", type: "Dense", units: 3, activation: "softmax" }])),
    ),
    /^E_MODEL_SHAPE: the output is \[3\]/,
  );
  assert.match(
    code(() => validateGraph(graph([head[0], { name: "o", type: "Dense", units: 4, activation: "relu" }]))),
    /^E_MODEL_SPEC: task 'classification' needs an output activation/,
  );
  assert.match(
    code(() => validateGraph(graph(head, { loss: "mse" }))),
    /^E_MODEL_SPEC: loss 'mse' does not fit/,
  );
  // A dangling branch would hold weights that never train.
  assert.match(
    code(() =>
      validateGraph(graph([{ name: "side", type: "Flatten" }, { ...head[0], inputs: ["input"] }, head[1]])),
    ),
    /^E_MODEL_SPEC: layer 'side' does not lead to the model output/,
  );
  assert.match(
    code(() => validateGraph(graph([{ name: "input", type: "Flatten" }, head[1]]))),
    /^E_MODEL_SPEC/,
  );
  assert.match(
    code(() => validateSpec({ kind: "transformer" })),
    /^E_MODEL_SPEC: model spec has unknown kind/,
  );
});

test("shape inference and the tensors of every layer type, functional graph included", () => {
  const g: GraphSpec = {
    kind: "graph",
    inputShape: [16, 16, 3],
    layers: [
      {
        name: "c",
        type: "Conv2D",
        filters: 8,
        kernelSize: [3, 3],
        strides: [2, 2],
        padding: "same",
        activation: "relu",
      },
      { name: "bn", type: "BatchNormalization" },
      { name: "dw", type: "DepthwiseConv2D", kernelSize: [3, 3], depthMultiplier: 2, padding: "valid" },
      {
        name: "sep",
        type: "SeparableConv2D",
        filters: 16,
        kernelSize: [3, 3],
        padding: "same",
        inputs: ["bn"],
      },
      { name: "ap", type: "AveragePooling2D", poolSize: [2, 2], inputs: ["sep"] },
      { name: "mp", type: "MaxPooling2D", poolSize: [3, 3], strides: [1, 1], inputs: ["dw"] },
      { name: "cat", type: "Concatenate", inputs: ["ap", "mp"] },
      { name: "r", type: "Reshape", targetShape: [16, -1] },
      { name: "c1", type: "Conv1D", filters: 6, kernelSize: 3, padding: "valid" },
      { name: "p1", type: "MaxPooling1D", poolSize: 2, padding: "same" },
      { name: "lstm", type: "LSTM", units: 5, returnSequences: true },
      { name: "gru", type: "GRU", units: 4, resetAfter: true, returnSequences: true },
      { name: "a1", type: "AveragePooling1D", poolSize: 2 },
      { name: "gap", type: "GlobalAveragePooling1D" },
      { name: "drop", type: "Dropout", rate: 0.2 },
      { name: "o", type: "Dense", units: 3, activation: "softmax" },
    ],
    loss: "sparse_categorical_crossentropy",
    task: "classification",
    numClasses: 3,
  };
  const info = analyzeGraph(g);
  const out = Object.fromEntries(info.layers.map((l) => [l.layer.name, l.outShape]));
  assert.deepEqual(out, {
    c: [8, 8, 8],
    bn: [8, 8, 8],
    dw: [6, 6, 16],
    sep: [8, 8, 16],
    ap: [4, 4, 16],
    mp: [4, 4, 16],
    cat: [4, 4, 32],
    r: [16, 32],
    c1: [14, 6],
    p1: [7, 6],
    lstm: [7, 5],
    gru: [7, 4],
    a1: [3, 4],
    gap: [4],
    drop: [4],
    o: [3],
  });
  assert.equal(info.head, "softmax");
  const t = graphTensors(g);
  assert.deepEqual(
    t.map((e) => [e.name, e.shape, e.trainable, e.bn]),
    [
      ["c/kernel", [3, 3, 3, 8], true, false],
      ["c/bias", [8], true, false],
      ["bn/gamma", [8], true, true],
      ["bn/beta", [8], true, true],
      ["bn/moving_mean", [8], false, true],
      ["bn/moving_variance", [8], false, true],
      ["dw/depthwise_kernel", [3, 3, 8, 2], true, false],
      ["dw/bias", [16], true, false],
      ["sep/depthwise_kernel", [3, 3, 8, 1], true, false],
      ["sep/pointwise_kernel", [1, 1, 8, 16], true, false],
      ["sep/bias", [16], true, false],
      ["c1/kernel", [3, 32, 6], true, false],
      ["c1/bias", [6], true, false],
      ["lstm/kernel", [6, 20], true, false],
      ["lstm/recurrent_kernel", [5, 20], true, false],
      ["lstm/bias", [20], true, false],
      ["gru/kernel", [5, 12], true, false],
      ["gru/recurrent_kernel", [4, 12], true, false],
      ["gru/bias", [2, 12], true, false],
      ["o/kernel", [4, 3], true, false],
      ["o/bias", [3], true, false],
    ],
  );
  // Initial values: BN γ 1 β 0 mean 0 var 1, LSTM forget bias 1, orthogonal recurrent kernels (rows orthonormal).
  const w = initialWeights(g, 3);
  const layout = modelLayout(g);
  const at = (name: string) => {
    const e = layout.entries.find((x) => x.name === name);
    assert.ok(e);
    return w.subarray(e.offset, e.offset + e.size);
  };
  assert.ok(at("bn/gamma").every((v) => v === 1) && at("bn/moving_variance").every((v) => v === 1));
  assert.ok(at("bn/beta").every((v) => v === 0) && at("bn/moving_mean").every((v) => v === 0));
  const bias = at("lstm/bias");
  assert.deepEqual([...bias], [...new Array(5).fill(0), ...new Array(5).fill(1), ...new Array(10).fill(0)]);
  for (const name of ["lstm/recurrent_kernel", "gru/recurrent_kernel"]) {
    const r = at(name);
    const rows = name.startsWith("lstm") ? 5 : 4;
    const cols = r.length / rows;
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < rows; j++) {
        let dot = 0;
        for (let k = 0; k < cols; k++) dot += r[i * cols + k] * r[j * cols + k];
        assert.ok(Math.abs(dot - (i === j ? 1 : 0)) < 1e-5, `${name} rows ${i}·${j} = ${dot}`);
      }
    }
  }
  const k = at("c/kernel");
  const limit = Math.sqrt(6 / (27 + 72));
  assert.ok(k.every((v) => Math.abs(v) <= limit) && k.some((v) => v !== 0));
});

test("Embedding reads an int32 input; sequence models", () => {
  const g: GraphSpec = {
    kind: "graph",
    inputShape: [12],
    inputDtype: "int32",
    layers: [
      { name: "emb", type: "Embedding", inputDim: 50, outputDim: 8 },
      { name: "gru", type: "GRU", units: 6 },
      { name: "o", type: "Dense", units: 1, activation: "sigmoid" },
    ],
    loss: "binary_crossentropy",
    task: "binary",
    numClasses: 2,
  };
  const info = analyzeGraph(g);
  assert.equal(info.head, "sigmoid");
  assert.deepEqual(info.layers[0].outShape, [12, 8]);
  const e = initialWeights(g, 1).subarray(0, 400);
  assert.ok(e.every((v) => Math.abs(v) <= 0.05));
  assert.match(
    code(() => validateGraph({ ...g, inputDtype: "float32" })),
    /^E_MODEL_SPEC: layer 'emb'/,
  );
});

test("BN policy local: the device's BN entries over the incoming model; uploads carry the global BN", () => {
  const g = graph([
    { name: "bn", type: "BatchNormalization" },
    { name: "g", type: "GlobalAveragePooling2D" },
    { name: "o", type: "Dense", units: 4, activation: "softmax" },
  ]);
  const layout = modelLayout(g);
  const mask = bnMask(graphTensors(g));
  assert.deepEqual(mask, [true, true, true, true, false, false]);
  const local = Float32Array.from({ length: layout.totalSize }, (_, i) => i);
  const incoming = Float32Array.from({ length: layout.totalSize }, (_, i) => -i);
  const start = bnLocalStart(layout, mask, local, incoming);
  assert.deepEqual([...start.subarray(0, 12)], [...local.subarray(0, 12)]);
  assert.deepEqual([...start.subarray(12)], [...incoming.subarray(12)]);
  assert.deepEqual(bnLocalStart(layout, mask, null, incoming), incoming);
  assert.deepEqual(bnLocalStart(layout, mask, local, incoming, "aggregate"), incoming);
  const upload = withBnFrom(layout, mask, local, incoming);
  assert.deepEqual([...upload.subarray(0, 12)], [...incoming.subarray(0, 12)]);
  assert.deepEqual([...upload.subarray(12)], [...local.subarray(12)]);
});
