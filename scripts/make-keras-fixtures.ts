/**
 * `node dist/scripts/make-keras-fixtures.js [OUT]` (default test/fixtures/keras): writes the Keras / TensorFlow.js
 * Layers models the import tests and docs/byom.md use, each as OUT/<name>/model.json + weights.bin, exactly what
 * tfjs `model.save()` writes (built with tfjs-layers, saved through tf.io.withSaveHandler). Weights are seeded
 * (core/data/rng.ts: Glorot-uniform kernels, small biases, BatchNormalization statistics away from 0/1), so the
 * files are the same on every run.
 *
 *   mnist-cnn       McMahan et al. 2017 CNN: conv5x5x32 same relu, maxpool2, conv5x5x64 same relu, maxpool2,
 *                   flatten, dense512 relu, dense10 softmax on [28, 28, 1] (1,663,370 parameters)
 *   sensors-lstm    LSTM(32) → Dropout → Dense(5, softmax) on [32, 6] sensor windows (core/data/sensors.ts)
 *   sensors-gru     GRU(32) → Dense(5, softmax) on [32, 6] (tfjs-layers GRUs are reset_after: false)
 *   functional      a functional graph: Conv2D, SeparableConv2D, Add, BatchNormalization, DepthwiseConv2D,
 *                   Concatenate, AveragePooling2D, GlobalAveragePooling2D, Dropout, Dense softmax on [12, 12, 3]
 *   conv1d-binary   Conv1D, MaxPooling1D, AveragePooling1D, Activation, Reshape, Conv2D (strided, valid),
 *                   Flatten, Dense sigmoid on [32, 6] (binary, compiled with binary cross-entropy)
 *   embedding       Embedding(50, 8) → GlobalAveragePooling1D → Dense(3, softmax) on [10] token ids
 *   unsupported     Conv2D → GlobalMaxPooling2D → Dense: refused (GlobalMaxPooling2D is not a supported layer)
 *
 * Also writes the weight shard of the hand-written Keras 3 model.json kept next to it (the script never
 * writes that model.json: it is what Python Keras 3 + tensorflowjs_converter write, kept by hand).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-cpu";
import { Rng } from "../core/data/rng";

/** Seeded weights for a tensor named `name` of `shape` (Keras weight names). */
export function fixtureValues(rng: Rng, name: string, shape: readonly number[]): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const v = new Float32Array(n);
  const w = name.slice(name.lastIndexOf("/") + 1);
  const u = () => 2 * rng.next() - 1;
  if (shape.length >= 2 && /kernel|embeddings/.test(w)) {
    const rec = shape.slice(0, -2).reduce((a, b) => a * b, 1);
    const fanIn = shape[shape.length - 2] * rec;
    const fanOut = shape[shape.length - 1] * rec;
    const limit = w === "embeddings" ? 0.5 : Math.sqrt(6 / (fanIn + fanOut));
    for (let i = 0; i < n; i++) v[i] = limit * u();
  } else if (w === "gamma") {
    for (let i = 0; i < n; i++) v[i] = 1 + 0.2 * u();
  } else if (w === "moving_variance") {
    for (let i = 0; i < n; i++) v[i] = 0.75 + 0.5 * rng.next();
  } else if (w === "moving_mean") {
    for (let i = 0; i < n; i++) v[i] = 0.3 * u();
  } else {
    for (let i = 0; i < n; i++) v[i] = 0.05 * u();
  }
  return v;
}

function seedWeights(model: tf.LayersModel, seed: number): void {
  const rng = new Rng(seed);
  model.setWeights(
    model.weights.map((w) => {
      const shape = w.shape as number[];
      return tf.tensor(fixtureValues(rng, w.originalName, shape), shape);
    }),
  );
}

/** Writes model.json + weights.bin as tfjs's file:// handler does (one shard). */
export async function saveLayersModel(model: tf.LayersModel, dir: string): Promise<void> {
  await model.save(
    tf.io.withSaveHandler(async (a) => {
      fs.mkdirSync(dir, { recursive: true });
      const json = {
        modelTopology: a.modelTopology,
        format: a.format,
        generatedBy: a.generatedBy,
        convertedBy: a.convertedBy ?? null,
        ...(a.trainingConfig ? { trainingConfig: a.trainingConfig } : {}),
        weightsManifest: [{ paths: ["weights.bin"], weights: a.weightSpecs }],
      };
      fs.writeFileSync(path.join(dir, "model.json"), JSON.stringify(json) + "\n");
      fs.writeFileSync(path.join(dir, "weights.bin"), new Uint8Array(a.weightData as ArrayBuffer));
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: "JSON" } };
    }),
    // With the optimizer tfjs writes the trainingConfig (the loss the importer reads) and the optimizer's weights.
    { includeOptimizer: true },
  );
}

const L = tf.layers;

/** The fixture models, by directory name. */
export function fixtureModels(): Record<string, () => tf.LayersModel> {
  return {
    "mnist-cnn": () => {
      const m = tf.sequential({ name: "mcmahan_cnn" });
      m.add(
        L.conv2d({
          inputShape: [28, 28, 1],
          filters: 32,
          kernelSize: 5,
          padding: "same",
          activation: "relu",
        }),
      );
      m.add(L.maxPooling2d({ poolSize: 2 }));
      m.add(L.conv2d({ filters: 64, kernelSize: 5, padding: "same", activation: "relu" }));
      m.add(L.maxPooling2d({ poolSize: 2 }));
      m.add(L.flatten());
      m.add(L.dense({ units: 512, activation: "relu" }));
      m.add(L.dense({ units: 10, activation: "softmax" }));
      m.compile({ optimizer: "sgd", loss: "sparseCategoricalCrossentropy", metrics: ["accuracy"] });
      return m;
    },
    "sensors-lstm": () => {
      const m = tf.sequential({ name: "sensors_lstm" });
      m.add(L.lstm({ inputShape: [32, 6], units: 32 }));
      m.add(L.dropout({ rate: 0.1 }));
      m.add(L.dense({ units: 5, activation: "softmax" }));
      m.compile({ optimizer: "adam", loss: "sparseCategoricalCrossentropy", metrics: ["accuracy"] });
      return m;
    },
    "sensors-gru": () => {
      const m = tf.sequential({ name: "sensors_gru" });
      m.add(L.gru({ inputShape: [32, 6], units: 32 }));
      m.add(L.dense({ units: 5, activation: "softmax" }));
      m.compile({ optimizer: "adam", loss: "sparseCategoricalCrossentropy", metrics: ["accuracy"] });
      return m;
    },
    functional: () => {
      const input = tf.input({ shape: [12, 12, 3], name: "image" });
      const a = L.conv2d({
        filters: 8,
        kernelSize: 3,
        padding: "same",
        activation: "relu",
        name: "conv",
      }).apply(input) as tf.SymbolicTensor;
      const b = L.separableConv2d({ filters: 8, kernelSize: 3, padding: "same", name: "sep" }).apply(
        input,
      ) as tf.SymbolicTensor;
      const sum = L.add({ name: "sum" }).apply([a, b]) as tf.SymbolicTensor;
      const bn = L.batchNormalization({ name: "bn" }).apply(sum) as tf.SymbolicTensor;
      const dw = L.depthwiseConv2d({
        kernelSize: 3,
        depthMultiplier: 2,
        padding: "same",
        activation: "relu6",
        name: "dw",
      }).apply(input) as tf.SymbolicTensor;
      const cat = L.concatenate({ name: "cat" }).apply([bn, dw]) as tf.SymbolicTensor;
      const pool = L.averagePooling2d({ poolSize: 2, name: "avg" }).apply(cat) as tf.SymbolicTensor;
      const gap = L.globalAveragePooling2d({ name: "gap" }).apply(pool) as tf.SymbolicTensor;
      const drop = L.dropout({ rate: 0.2, name: "drop" }).apply(gap) as tf.SymbolicTensor;
      const out = L.dense({ units: 4, activation: "softmax", name: "out" }).apply(drop) as tf.SymbolicTensor;
      const m = tf.model({ inputs: input, outputs: out, name: "functional_mix" });
      m.compile({ optimizer: "sgd", loss: "categoricalCrossentropy" });
      return m;
    },
    "conv1d-binary": () => {
      const m = tf.sequential({ name: "conv1d_binary" });
      m.add(L.conv1d({ inputShape: [32, 6], filters: 8, kernelSize: 3, activation: "elu" }));
      m.add(L.maxPooling1d({ poolSize: 2 }));
      m.add(L.conv1d({ filters: 8, kernelSize: 3, padding: "same", strides: 1, useBias: false }));
      m.add(L.activation({ activation: "tanh" }));
      m.add(L.averagePooling1d({ poolSize: 3, strides: 2, padding: "same" }));
      m.add(L.reshape({ targetShape: [8, 8, 1] }));
      m.add(L.conv2d({ filters: 4, kernelSize: [3, 2], strides: [2, 2], activation: "sigmoid" }));
      m.add(L.flatten());
      m.add(L.dense({ units: 1, activation: "sigmoid" }));
      m.compile({ optimizer: "sgd", loss: "binaryCrossentropy" });
      return m;
    },
    embedding: () => {
      const m = tf.sequential({ name: "embedding_bag" });
      m.add(L.embedding({ inputDim: 50, outputDim: 8, inputLength: 10 }));
      m.add(L.globalAveragePooling1d());
      m.add(L.dense({ units: 3, activation: "softmax" }));
      return m;
    },
    unsupported: () => {
      const m = tf.sequential({ name: "unsupported" });
      m.add(L.conv2d({ inputShape: [8, 8, 1], filters: 4, kernelSize: 3, name: "conv" }));
      m.add(L.globalMaxPooling2d({ name: "global_max" }));
      m.add(L.dense({ units: 2, activation: "softmax", name: "out" }));
      return m;
    },
  };
}

/** The hand-written Keras 3 fixture's weights (keras3/model.json's manifest order): seeded like the others. */
export function keras3Weights(modelJson: {
  weightsManifest: { paths: string[]; weights: { name: string; shape: number[] }[] }[];
}): Float32Array {
  const rng = new Rng(3);
  const parts = modelJson.weightsManifest[0].weights.map((w) => fixtureValues(rng, w.name, w.shape));
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Writes the fixtures named in `only` (default all) into `out`. Each fixture's seed is its place in the list, so a
 * subset is written exactly as the whole run writes it.
 */
export async function writeFixtures(out: string, only?: readonly string[]): Promise<void> {
  tf.env().set("PROD", true); // no "install tfjs-node" banner
  if (tf.getBackend() !== "cpu") await tf.setBackend("cpu");
  let seed = 1;
  for (const [name, build] of Object.entries(fixtureModels())) {
    const s = seed++;
    if (only && !only.includes(name)) continue;
    const model = build();
    seedWeights(model, s);
    await saveLayersModel(model, path.join(out, name));
    process.stdout.write(`${name}: ${model.countParams()} parameters\n`);
    model.dispose();
  }
  const k3 = path.join(out, "keras3", "model.json");
  if ((!only || only.includes("keras3")) && fs.existsSync(k3)) {
    const json = JSON.parse(fs.readFileSync(k3, "utf8")) as Parameters<typeof keras3Weights>[0];
    const w = keras3Weights(json);
    fs.writeFileSync(path.join(out, "keras3", json.weightsManifest[0].paths[0]), new Uint8Array(w.buffer));
    process.stdout.write(`keras3: ${w.length} parameters\n`);
  }
}

/** Fixtures too large to keep in git (6.5 MB of weights): written on first use, e.g. by the test suite's setup. */
export const GENERATED_FIXTURES = ["mnist-cnn"] as const;

/** Writes the generated fixtures that are missing from `out` (their weights.bin is not tracked). */
export async function ensureGeneratedFixtures(out: string): Promise<void> {
  const missing = GENERATED_FIXTURES.filter((n) => !fs.existsSync(path.join(out, n, "weights.bin")));
  if (missing.length > 0) await writeFixtures(out, missing);
}

async function main(): Promise<void> {
  await writeFixtures(path.resolve(process.argv[2] ?? path.join("test", "fixtures", "keras")));
}

if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    process.exit(1);
  });
}
