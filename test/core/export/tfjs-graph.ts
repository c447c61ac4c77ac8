/**
 * An independent reference for the ONNX export tests: a layer graph (graph-spec.ts) built as a tfjs-layers
 * functional model on the cpu backend (every option passed by its tfjs-layers name), its weights drawn from a
 * seeded generator, flattened in layer order then Keras weight order, and the per-sample output shape of each node.
 * tfjs-layers' GRU has no reset_after; `gruResetAfter` is a plain-JS reference of Keras's GRUCell for it.
 */
import * as tf from "@tensorflow/tfjs";
import { Rng } from "../../../core/data/rng";
import { silenceTfjs } from "../../../core/engine/backend";
import type { ActivationName, GraphSpec, LayerSpec } from "../../../core/engine/graph-spec";
import { INPUT_NODE } from "../../../core/engine/graph-spec";
import { makeLayout, type WeightLayout } from "../../../core/tensor/layout";

export interface Reference {
  readonly model: tf.LayersModel;
  readonly weights: Float32Array;
  readonly layout: WeightLayout;
  readonly shapes: Map<string, readonly number[]>;
}

let ready: Promise<void> | null = null;

/** Selects the tfjs cpu backend (once). */
export function cpuBackend(): Promise<void> {
  silenceTfjs();
  ready ??= tf.setBackend("cpu").then(async (ok) => {
    if (!ok) throw new Error("no tfjs cpu backend");
    await tf.ready();
  });
  return ready;
}

function act(a: ActivationName | undefined): string | undefined {
  return a === "hard_sigmoid" ? "hardSigmoid" : a;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function tfLayer(layer: LayerSpec, inputSize: number): any {
  const l = layer;
  const name = l.name;
  // The options as tfjs-layers takes them: everything but the graph's own fields.
  // eslint-disable-next-line @typescript-eslint/no-unused-vars
  const { type, inputs, ...opts } = layer as LayerSpec & { inputs?: unknown };
  switch (l.type) {
    case "Dense":
      return tf.layers.dense({
        name,
        units: l.units,
        activation: act(l.activation),
        useBias: l.useBias,
      } as never);
    case "Conv1D":
      return tf.layers.conv1d({ ...opts, activation: act(l.activation) } as never);
    case "Conv2D":
      return tf.layers.conv2d({ ...opts, activation: act(l.activation) } as never);
    case "DepthwiseConv2D":
      return tf.layers.depthwiseConv2d({ ...opts, activation: act(l.activation) } as never);
    case "SeparableConv2D":
      return tf.layers.separableConv2d({ ...opts, activation: act(l.activation) } as never);
    case "MaxPooling1D":
      return tf.layers.maxPooling1d({ ...opts } as never);
    case "AveragePooling1D":
      return tf.layers.averagePooling1d({ ...opts } as never);
    case "MaxPooling2D":
      return tf.layers.maxPooling2d({ ...opts } as never);
    case "AveragePooling2D":
      return tf.layers.averagePooling2d({ ...opts } as never);
    case "GlobalAveragePooling1D":
      return tf.layers.globalAveragePooling1d({ name });
    case "GlobalAveragePooling2D":
      return tf.layers.globalAveragePooling2d({ name });
    case "Flatten":
      return tf.layers.flatten({ name });
    case "Reshape":
      return tf.layers.reshape({ name, targetShape: resolveTarget(l.targetShape, inputSize) });
    case "Dropout":
      return tf.layers.dropout({ name, rate: l.rate, seed: 1 });
    case "BatchNormalization":
      return tf.layers.batchNormalization({ ...opts } as never);
    case "Activation":
      return tf.layers.activation({ name, activation: act(l.activation) } as never);
    case "LSTM":
      return tf.layers.lstm({
        ...opts,
        activation: act(l.activation),
        recurrentActivation: act(l.recurrentActivation ?? "sigmoid"), // graph.ts's default (Keras 2)
      } as never);
    case "GRU":
      return tf.layers.gru({
        ...opts,
        activation: act(l.activation),
        recurrentActivation: act(l.recurrentActivation ?? "sigmoid"), // graph.ts's default (Keras 2)
      } as never);
    case "Embedding":
      return tf.layers.embedding({ name, inputDim: l.inputDim, outputDim: l.outputDim });
    case "Add":
      return tf.layers.add({ name });
    case "Concatenate":
      return tf.layers.concatenate({ name, axis: -1 });
  }
}

/** A Reshape target with its -1 resolved (tfjs-layers leaves it unknown in the model's output shape). */
function resolveTarget(target: readonly number[], size: number): number[] {
  const known = target.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
  return target.map((d) => (d === -1 ? size / known : d));
}

/** Seeded random weights for a layout (the same draws per tensor as `reference`). */
export function randomWeights(layout: WeightLayout, seed: number): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(layout.totalSize);
  for (const e of layout.entries) out.set(randomTensor(rng, e.name.split("/").pop()!, e.shape), e.offset);
  return out;
}

/** Random weights for one tensor (Glorot-like kernels, non-zero biases, BN statistics around 0 / 1). */
function randomTensor(rng: Rng, wname: string, shape: readonly number[]): Float32Array {
  const size = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(size);
  if (wname.includes("kernel") || wname === "embeddings") {
    const fanOut = shape[shape.length - 1];
    const fanIn = size / fanOut;
    const lim = Math.sqrt(6 / (fanIn + fanOut));
    for (let i = 0; i < size; i++) out[i] = (2 * rng.next() - 1) * lim;
  } else if (wname === "gamma") {
    for (let i = 0; i < size; i++) out[i] = 1 + 0.2 * rng.normal();
  } else if (wname === "moving_variance") {
    for (let i = 0; i < size; i++) out[i] = 0.3 + rng.next();
  } else {
    for (let i = 0; i < size; i++) out[i] = 0.2 * rng.normal();
  }
  return out;
}

/** The tfjs-layers model of `graph` with seeded random weights (cpu backend). */
export async function reference(graph: GraphSpec, seed: number): Promise<Reference> {
  await cpuBackend();
  const input = tf.input({
    shape: [...graph.inputShape],
    dtype: graph.inputDtype ?? "float32",
    name: "the_input",
  });
  const nodes = new Map<string, tf.SymbolicTensor>([[INPUT_NODE, input]]);
  let previous = INPUT_NODE;
  for (const l of graph.layers) {
    const ins = (l.inputs ?? [previous]).map((n) => nodes.get(n)!);
    const inSize = (ins[0].shape.slice(1) as number[]).reduce((a, b) => a * b, 1);
    const layer = tfLayer(l, inSize);
    nodes.set(l.name, layer.apply(ins.length === 1 ? ins[0] : ins) as tf.SymbolicTensor);
    previous = l.name;
  }
  const model = tf.model({ inputs: input, outputs: nodes.get(graph.output ?? previous)! });
  const rng = new Rng(seed);
  const tensors: { name: string; shape: number[] }[] = [];
  const parts: Float32Array[] = [];
  const shapes = new Map<string, readonly number[]>([[INPUT_NODE, [...graph.inputShape]]]);
  for (const l of graph.layers) {
    const layer = model.getLayer(l.name);
    shapes.set(l.name, (layer.outputShape as number[]).slice(1));
    const fresh = layer.weights.map((w) => {
      const wname = w.originalName.split("/").pop()!;
      const data = randomTensor(rng, wname, w.shape as number[]);
      tensors.push({ name: `${l.name}/${wname}`, shape: w.shape as number[] });
      parts.push(data);
      return tf.tensor(data, w.shape as number[]);
    });
    if (fresh.length > 0) {
      layer.setWeights(fresh);
      fresh.forEach((t) => t.dispose());
    }
  }
  const layout = makeLayout(tensors);
  const weights = new Float32Array(layout.totalSize);
  let o = 0;
  for (const p of parts) {
    weights.set(p, o);
    o += p.length;
  }
  return { model, weights, layout, shapes };
}

/** The model's current weights in the layout order (after training). */
export function currentWeights(ref: Reference, graph: GraphSpec): Float32Array {
  const out = new Float32Array(ref.layout.totalSize);
  let o = 0;
  for (const l of graph.layers) {
    for (const w of ref.model.getLayer(l.name).getWeights()) {
      const d = w.dataSync() as Float32Array;
      out.set(d, o);
      o += d.length;
    }
  }
  return out;
}

/**
 * Trains the reference model a little (Adam, tfjs-layers fit) so int8 agreement is measured on a model that
 * separates the classes; returns its weights.
 */
export async function train(
  ref: Reference,
  graph: GraphSpec,
  x: Float32Array,
  y: Int32Array,
  epochs: number,
): Promise<Float32Array> {
  const n = y.length;
  const dims = [n, ...graph.inputShape];
  const xs = graph.inputDtype === "int32" ? tf.tensor(Int32Array.from(x), dims, "int32") : tf.tensor(x, dims);
  const binary = graph.task === "binary";
  const ys = binary
    ? tf.tensor(Float32Array.from(y), [n, 1])
    : tf.oneHot(tf.tensor1d(y, "int32"), graph.numClasses);
  ref.model.compile({
    optimizer: tf.train.adam(0.01),
    loss: binary ? "binaryCrossentropy" : "categoricalCrossentropy",
  });
  await ref.model.fit.call(ref.model, xs, ys, { epochs, batchSize: 32, shuffle: false, verbose: 0 });
  xs.dispose();
  ys.dispose();
  return currentWeights(ref, graph);
}

/** The reference model's output for n samples x (float values; int32 ids for an int32 input). */
export function referencePredict(ref: Reference, graph: GraphSpec, x: Float32Array, n: number): Float32Array {
  return tf.tidy(() => {
    const dims = [n, ...graph.inputShape];
    const input =
      graph.inputDtype === "int32" ? tf.tensor(Int32Array.from(x), dims, "int32") : tf.tensor(x, dims);
    return (ref.model.predict(input) as tf.Tensor).dataSync() as Float32Array;
  });
}

const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));
const hardSigmoid = (v: number) => Math.min(1, Math.max(0, 0.2 * v + 0.5));

/**
 * Keras GRUCell with reset_after = True (keras/src/layers/rnn/gru.py, `call`): with x_z = x·W_z + b_in_z,
 * hr_z = h·U_z + b_rec_z (the same for r, h): z = σ(x_z + hr_z), r = σ(x_r + hr_r), hh = tanh(x_h + r ⊙ hr_h),
 * h' = z ⊙ h + (1 − z) ⊙ hh. Kernel [in, 3u], recurrent kernel [u, 3u], bias [2, 3u]; returns the last h [n, u].
 */
export function gruResetAfter(
  x: Float32Array,
  n: number,
  steps: number,
  nin: number,
  u: number,
  w: { kernel: Float32Array; recurrent: Float32Array; bias: Float32Array },
  recurrentActivation: "sigmoid" | "hard_sigmoid",
): Float32Array {
  const f = recurrentActivation === "sigmoid" ? sigmoid : hardSigmoid;
  const out = new Float32Array(n * u);
  for (let s = 0; s < n; s++) {
    let h = new Float64Array(u);
    for (let t = 0; t < steps; t++) {
      const xs = x.subarray((s * steps + t) * nin, (s * steps + t + 1) * nin);
      const xg = new Float64Array(3 * u);
      const hg = new Float64Array(3 * u);
      for (let j = 0; j < 3 * u; j++) {
        let a = w.bias[j];
        for (let i = 0; i < nin; i++) a += xs[i] * w.kernel[i * 3 * u + j];
        xg[j] = a;
        let b = w.bias[3 * u + j];
        for (let i = 0; i < u; i++) b += h[i] * w.recurrent[i * 3 * u + j];
        hg[j] = b;
      }
      const next = new Float64Array(u);
      for (let j = 0; j < u; j++) {
        const z = f(xg[j] + hg[j]);
        const r = f(xg[u + j] + hg[u + j]);
        const hh = Math.tanh(xg[2 * u + j] + r * hg[2 * u + j]);
        next[j] = z * h[j] + (1 - z) * hh;
      }
      h = next;
    }
    out.set(h, s * u);
  }
  return out;
}
