/**
 * The layer graph of `graph-spec.ts` without tfjs (the Function and ONNX export import this): validation with coded
 * errors, per-layer shape inference (sequential and functional graphs), the weight tensors in the documented layout
 * order, initial weights from our seeded `Rng`, the presets as graphs (`presetGraph`) and back (`matchPreset`, which
 * recognises the graphs the hand-written fast path trains), and the BatchNormalization "local" policy (FedBN).
 *
 * Defaults where Keras and tfjs-layers differ, for options a spec leaves out: LSTM/GRU activation tanh and
 * recurrentActivation sigmoid (Keras 2; tfjs-layers defaults to hard_sigmoid), GRU resetAfter false (tfjs-layers;
 * Keras 2 writes it explicitly), LSTM unitForgetBias true, BatchNormalization momentum 0.99 and epsilon 1e-3.
 *
 * Initial weights (Keras's initializers, drawn from `Rng` so every process gets bit-identical weights): Glorot
 * uniform kernels (Glorot & Bengio 2010; fans as Keras: fan_in = receptive field × input channels), zero biases,
 * orthogonal recurrent kernels (Saxe et al. 2014, "Exact solutions to the nonlinear dynamics of learning in deep
 * linear neural networks"; QR of a Gaussian matrix, signs fixed by R's diagonal, as Keras's Orthogonal), LSTM
 * forget-gate bias 1 with unitForgetBias (Jozefowicz et al. 2015), BatchNormalization γ 1, β 0, mean 0, variance 1,
 * Embedding uniform ±0.05. Tensors are initialised in layout order from one generator, so a preset's graph gets
 * exactly the preset's initial weights.
 */
import { fail } from "../errors";
import { Rng } from "../data/rng";
import type { WeightLayout } from "../tensor/layout";
import {
  INPUT_NODE,
  LAYER_TYPES,
  type ActivationName,
  type BnPolicy,
  type GraphSpec,
  type LayerSpec,
  type LayerType,
  type LossName,
  type Padding,
  type Task,
} from "./graph-spec";
import type { ModelKind, PresetSpec } from "./model-spec";

export const ACTIVATIONS: readonly ActivationName[] = [
  "linear",
  "relu",
  "relu6",
  "elu",
  "selu",
  "sigmoid",
  "hard_sigmoid",
  "tanh",
  "softmax",
  "softplus",
  "softsign",
  "swish",
];
export const LOSSES: readonly LossName[] = [
  "categorical_crossentropy",
  "sparse_categorical_crossentropy",
  "binary_crossentropy",
  "mse",
];
export const TASKS: readonly Task[] = ["classification", "binary", "regression", "reconstruction"];
export const BN_POLICIES: readonly BnPolicy[] = ["aggregate", "local"];

/** How a tensor's initial values are drawn. */
export type TensorInit =
  | { readonly kind: "glorot"; readonly fanIn: number; readonly fanOut: number }
  | { readonly kind: "zeros" }
  | { readonly kind: "ones" }
  | { readonly kind: "orthogonal" }
  | { readonly kind: "uniform"; readonly limit: number }
  /** LSTM bias [4u]: zeros, with the forget gate's block (second) set to 1. */
  | { readonly kind: "forgetBias"; readonly units: number };

/** One weight tensor of a graph, in layout order. */
export interface GraphTensor {
  /** `<layer name>/<weight name>`. */
  readonly name: string;
  readonly layer: string;
  /** Keras weight name: kernel, bias, depthwise_kernel, pointwise_kernel, recurrent_kernel, gamma, beta, ... */
  readonly weight: string;
  /** Keras shape. */
  readonly shape: number[];
  /** False for BatchNormalization's moving mean and variance (updated by training, not by gradients). */
  readonly trainable: boolean;
  /** Part of a BatchNormalization layer (γ, β, moving statistics): what the BN policy keeps local. */
  readonly bn: boolean;
  readonly init: TensorInit;
}

/** A layer with its resolved inputs and inferred shapes (per sample, no batch dimension). */
export interface LayerInfo {
  readonly layer: LayerSpec;
  readonly inputs: readonly string[];
  readonly inShapes: readonly (readonly number[])[];
  readonly outShape: readonly number[];
}

export interface GraphInfo {
  readonly spec: GraphSpec;
  readonly layers: readonly LayerInfo[];
  readonly output: string;
  readonly outputShape: readonly number[];
  /** The output layer's activation when it is the loss's link (softmax for classification, sigmoid for binary):
   *  the engine computes the loss from the pre-activation. Null when the output is used as it is. */
  readonly head: "softmax" | "sigmoid" | null;
  readonly tensors: readonly GraphTensor[];
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null;
const isPosInt = (v: unknown): v is number => Number.isInteger(v) && (v as number) > 0;

function specErr(layer: string, msg: string): never {
  return fail("E_MODEL_SPEC", `layer '${layer}': ${msg}`);
}
function shapeErr(layer: string, msg: string): never {
  return fail("E_MODEL_SHAPE", `layer '${layer}': ${msg}`);
}

function posInt(l: Record<string, unknown>, key: string, dflt?: number): number {
  const v = l[key] ?? dflt;
  if (!isPosInt(v))
    specErr(String(l.name), `${key} must be a positive integer, got ${JSON.stringify(l[key])}`);
  return v;
}
function posPair(
  l: Record<string, unknown>,
  key: string,
  dflt?: readonly [number, number],
): [number, number] {
  const v = l[key] ?? dflt;
  if (!Array.isArray(v) || v.length !== 2 || !v.every(isPosInt)) {
    specErr(String(l.name), `${key} must be a pair of positive integers, got ${JSON.stringify(l[key])}`);
  }
  return [v[0], v[1]];
}
function padding(l: Record<string, unknown>): Padding {
  const p = l.padding ?? "valid";
  if (p !== "valid" && p !== "same")
    specErr(String(l.name), `padding must be 'valid' or 'same', got ${JSON.stringify(p)}`);
  return p;
}
function activation(
  l: Record<string, unknown>,
  key = "activation",
  dflt: ActivationName = "linear",
): ActivationName {
  const a = l[key] ?? dflt;
  if (!ACTIVATIONS.includes(a as ActivationName)) {
    specErr(
      String(l.name),
      `unknown ${key} ${JSON.stringify(a)} (expected one of ${ACTIVATIONS.join(", ")})`,
    );
  }
  return a as ActivationName;
}
function bool(l: Record<string, unknown>, key: string, dflt: boolean): boolean {
  const v = l[key] ?? dflt;
  if (typeof v !== "boolean")
    specErr(String(l.name), `${key} must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

/** Output length of a convolution or pooling window along one axis (TensorFlow's rule). */
function windowOut(
  name: string,
  n: number,
  k: number,
  s: number,
  d: number,
  pad: Padding,
  what: string,
): number {
  if (pad === "same") return Math.ceil(n / s);
  const span = (k - 1) * d + 1;
  if (n < span)
    shapeErr(name, `${what} ${k}${d > 1 ? ` (dilation ${d})` : ""} is larger than its input (${n})`);
  return Math.floor((n - span) / s) + 1;
}

const size = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);
const same = (a: readonly number[], b: readonly number[]): boolean =>
  a.length === b.length && a.every((d, i) => d === b[i]);

/** Keras's fans of a kernel: receptive field × the last two axes. */
function glorot(shape: readonly number[]): TensorInit {
  if (shape.length === 1) return { kind: "glorot", fanIn: shape[0], fanOut: shape[0] };
  const receptive = size(shape.slice(0, -2));
  return {
    kind: "glorot",
    fanIn: shape[shape.length - 2] * receptive,
    fanOut: shape[shape.length - 1] * receptive,
  };
}

/** The output shape and weight tensors of one layer, its options checked. */
function inferLayer(
  l: LayerSpec,
  inShapes: readonly (readonly number[])[],
  tensors: GraphTensor[],
): number[] {
  const r = l as unknown as Record<string, unknown>;
  const name = l.name;
  const x = inShapes[0];
  const add = (
    weight: string,
    shape: number[],
    init: TensorInit,
    extra?: { trainable?: boolean; bn?: boolean },
  ) =>
    tensors.push({
      name: `${name}/${weight}`,
      layer: name,
      weight,
      shape,
      trainable: extra?.trainable ?? true,
      bn: extra?.bn ?? false,
      init,
    });
  const needRank = (rank: number, what: string) => {
    if (x.length !== rank) shapeErr(name, `${l.type} needs ${what} inputs, got [${x}]`);
  };
  switch (l.type) {
    case "Dense": {
      const units = posInt(r, "units");
      activation(r);
      const useBias = bool(r, "useBias", true);
      if (x.length < 1) shapeErr(name, "Dense needs an input with at least one axis");
      const nin = x[x.length - 1];
      add("kernel", [nin, units], glorot([nin, units]));
      if (useBias) add("bias", [units], { kind: "zeros" });
      return [...x.slice(0, -1), units];
    }
    case "Conv1D": {
      needRank(2, "[time, channels]");
      const f = posInt(r, "filters");
      const k = posInt(r, "kernelSize");
      const s = posInt(r, "strides", 1);
      const d = posInt(r, "dilationRate", 1);
      if (s > 1 && d > 1) specErr(name, "strides > 1 with dilationRate > 1 is not supported (as in Keras)");
      const pad = padding(r);
      activation(r);
      const useBias = bool(r, "useBias", true);
      add("kernel", [k, x[1], f], glorot([k, x[1], f]));
      if (useBias) add("bias", [f], { kind: "zeros" });
      return [windowOut(name, x[0], k, s, d, pad, "kernel"), f];
    }
    case "Conv2D":
    case "DepthwiseConv2D":
    case "SeparableConv2D": {
      needRank(3, "[height, width, channels]");
      const [kh, kw] = posPair(r, "kernelSize");
      const [sh, sw] = posPair(r, "strides", [1, 1]);
      const pad = padding(r);
      activation(r);
      const useBias = bool(r, "useBias", true);
      let dh = 1;
      let dw = 1;
      if (l.type === "Conv2D") {
        [dh, dw] = posPair(r, "dilationRate", [1, 1]);
        if ((sh > 1 || sw > 1) && (dh > 1 || dw > 1)) {
          specErr(name, "strides > 1 with dilationRate > 1 is not supported (as in Keras)");
        }
      }
      const c = x[2];
      const oh = windowOut(name, x[0], kh, sh, dh, pad, "kernel");
      const ow = windowOut(name, x[1], kw, sw, dw, pad, "kernel");
      if (l.type === "Conv2D") {
        const f = posInt(r, "filters");
        add("kernel", [kh, kw, c, f], glorot([kh, kw, c, f]));
        if (useBias) add("bias", [f], { kind: "zeros" });
        return [oh, ow, f];
      }
      const mult = posInt(r, "depthMultiplier", 1);
      add("depthwise_kernel", [kh, kw, c, mult], glorot([kh, kw, c, mult]));
      if (l.type === "DepthwiseConv2D") {
        if (useBias) add("bias", [c * mult], { kind: "zeros" });
        return [oh, ow, c * mult];
      }
      const f = posInt(r, "filters");
      add("pointwise_kernel", [1, 1, c * mult, f], glorot([1, 1, c * mult, f]));
      if (useBias) add("bias", [f], { kind: "zeros" });
      return [oh, ow, f];
    }
    case "MaxPooling1D":
    case "AveragePooling1D": {
      needRank(2, "[time, channels]");
      const p = posInt(r, "poolSize");
      const s = posInt(r, "strides", p);
      const pad = padding(r);
      return [windowOut(name, x[0], p, s, 1, pad, "pool"), x[1]];
    }
    case "MaxPooling2D":
    case "AveragePooling2D": {
      needRank(3, "[height, width, channels]");
      const [ph, pw] = posPair(r, "poolSize");
      const [sh, sw] = posPair(r, "strides", [ph, pw]);
      const pad = padding(r);
      return [
        windowOut(name, x[0], ph, sh, 1, pad, "pool"),
        windowOut(name, x[1], pw, sw, 1, pad, "pool"),
        x[2],
      ];
    }
    case "GlobalAveragePooling1D":
      needRank(2, "[time, channels]");
      return [x[1]];
    case "GlobalAveragePooling2D":
      needRank(3, "[height, width, channels]");
      return [x[2]];
    case "Flatten":
      return [size(x)];
    case "Reshape": {
      const t = r.targetShape;
      if (
        !Array.isArray(t) ||
        t.length === 0 ||
        !t.every((d) => isPosInt(d) || d === -1) ||
        t.filter((d) => d === -1).length > 1
      ) {
        specErr(name, `targetShape must be positive integers with at most one -1, got ${JSON.stringify(t)}`);
      }
      const known = size((t as number[]).filter((d) => d !== -1));
      const total = size(x);
      const out = (t as number[]).map((d) => (d === -1 ? total / known : d));
      if (!out.every(isPosInt) || size(out) !== total) {
        shapeErr(name, `cannot reshape [${x}] (${total} values) to [${t as number[]}]`);
      }
      return out;
    }
    case "Dropout": {
      const rate = r.rate;
      if (typeof rate !== "number" || !(rate >= 0 && rate < 1)) {
        specErr(name, `rate must be a number in [0, 1), got ${JSON.stringify(rate)}`);
      }
      return [...x];
    }
    case "BatchNormalization": {
      if (r.axis !== undefined && r.axis !== -1 && r.axis !== x.length) {
        specErr(name, `only the last axis (-1) is supported, got axis ${JSON.stringify(r.axis)}`);
      }
      const m = r.momentum ?? 0.99;
      if (typeof m !== "number" || !(m >= 0 && m < 1))
        specErr(name, `momentum must be in [0, 1), got ${JSON.stringify(m)}`);
      const eps = r.epsilon ?? 1e-3;
      if (typeof eps !== "number" || !(eps > 0))
        specErr(name, `epsilon must be > 0, got ${JSON.stringify(eps)}`);
      const center = bool(r, "center", true);
      const scale = bool(r, "scale", true);
      if (x.length < 1) shapeErr(name, "BatchNormalization needs an input with at least one axis");
      const c = x[x.length - 1];
      if (scale) add("gamma", [c], { kind: "ones" }, { bn: true });
      if (center) add("beta", [c], { kind: "zeros" }, { bn: true });
      add("moving_mean", [c], { kind: "zeros" }, { bn: true, trainable: false });
      add("moving_variance", [c], { kind: "ones" }, { bn: true, trainable: false });
      return [...x];
    }
    case "Activation":
      if (r.activation === undefined) specErr(name, "Activation needs an activation");
      activation(r);
      return [...x];
    case "LSTM":
    case "GRU": {
      needRank(2, "[time, features]");
      const u = posInt(r, "units");
      activation(r, "activation", "tanh");
      activation(r, "recurrentActivation", "sigmoid");
      const seq = bool(r, "returnSequences", false);
      const useBias = bool(r, "useBias", true);
      const gates = l.type === "LSTM" ? 4 : 3;
      add("kernel", [x[1], gates * u], glorot([x[1], gates * u]));
      add("recurrent_kernel", [u, gates * u], { kind: "orthogonal" });
      if (l.type === "LSTM") {
        const forget = bool(r, "unitForgetBias", true);
        if (useBias) add("bias", [4 * u], forget ? { kind: "forgetBias", units: u } : { kind: "zeros" });
      } else {
        const resetAfter = bool(r, "resetAfter", false);
        if (useBias) add("bias", resetAfter ? [2, 3 * u] : [3 * u], { kind: "zeros" });
      }
      return seq ? [x[0], u] : [u];
    }
    case "Embedding": {
      const inputDim = posInt(r, "inputDim");
      const outputDim = posInt(r, "outputDim");
      add("embeddings", [inputDim, outputDim], { kind: "uniform", limit: 0.05 });
      return [...x, outputDim];
    }
    case "Add":
      for (const s of inShapes) {
        if (!same(s, x)) shapeErr(name, `Add needs inputs of one shape, got [${x}] and [${s}]`);
      }
      return [...x];
    case "Concatenate": {
      if (r.axis !== undefined && r.axis !== -1 && r.axis !== x.length) {
        specErr(name, `only the last axis (-1) is supported, got axis ${JSON.stringify(r.axis)}`);
      }
      let last = 0;
      for (const s of inShapes) {
        if (s.length !== x.length || !same(s.slice(0, -1), x.slice(0, -1))) {
          shapeErr(name, `Concatenate needs inputs that differ only in the last axis, got [${x}] and [${s}]`);
        }
        last += s[s.length - 1];
      }
      return [...x.slice(0, -1), last];
    }
  }
}

/**
 * Checks a graph spec and infers every layer's shapes and the weight tensors. Unknown layer types give
 * E_MODEL_LAYER naming the layer; bad options E_MODEL_SPEC; shapes that do not fit E_MODEL_SHAPE.
 */
export function analyzeGraph(spec: unknown): GraphInfo {
  if (!isObj(spec)) fail("E_MODEL_SPEC", "model spec must be a JSON object");
  const s = spec as Partial<GraphSpec> & Record<string, unknown>;
  if (s.kind !== "graph")
    fail("E_MODEL_SPEC", `a layer graph has kind 'graph', got ${JSON.stringify(s.kind)}`);
  if (!Array.isArray(s.inputShape) || s.inputShape.length === 0 || !s.inputShape.every(isPosInt)) {
    fail(
      "E_MODEL_SPEC",
      `model spec inputShape must be positive integers, got ${JSON.stringify(s.inputShape)}`,
    );
  }
  const inputDtype = s.inputDtype ?? "float32";
  if (inputDtype !== "float32" && inputDtype !== "int32") {
    fail(
      "E_MODEL_SPEC",
      `model spec inputDtype must be 'float32' or 'int32', got ${JSON.stringify(inputDtype)}`,
    );
  }
  if (!LOSSES.includes(s.loss as LossName)) {
    fail("E_MODEL_SPEC", `model spec loss ${JSON.stringify(s.loss)} is not one of ${LOSSES.join(", ")}`);
  }
  if (!TASKS.includes(s.task as Task)) {
    fail("E_MODEL_SPEC", `model spec task ${JSON.stringify(s.task)} is not one of ${TASKS.join(", ")}`);
  }
  if (!isPosInt(s.numClasses)) fail("E_MODEL_SPEC", "model spec numClasses must be a positive integer");
  if (s.bnPolicy !== undefined && !BN_POLICIES.includes(s.bnPolicy)) {
    fail(
      "E_MODEL_SPEC",
      `model spec bnPolicy must be one of ${BN_POLICIES.join(", ")}, got ${JSON.stringify(s.bnPolicy)}`,
    );
  }
  if (!Array.isArray(s.layers) || s.layers.length === 0)
    fail("E_MODEL_SPEC", "a layer graph needs at least one layer");
  const shapes = new Map<string, readonly number[]>([[INPUT_NODE, [...s.inputShape]]]);
  const infos: LayerInfo[] = [];
  const tensors: GraphTensor[] = [];
  const consumers = new Map<string, string[]>();
  let prev = INPUT_NODE;
  s.layers.forEach((raw: unknown, i: number) => {
    if (!isObj(raw)) fail("E_MODEL_SPEC", `layer ${i} must be a JSON object`);
    const name = raw.name;
    if (typeof name !== "string" || name === "" || name.includes("/")) {
      fail(
        "E_MODEL_SPEC",
        `layer ${i} needs a name (a non-empty string without '/'), got ${JSON.stringify(name)}`,
      );
    }
    if (name === INPUT_NODE)
      fail("E_MODEL_SPEC", `layer ${i} may not be called '${INPUT_NODE}' (the model input)`);
    if (shapes.has(name)) fail("E_MODEL_SPEC", `two layers are called '${name}'`);
    if (!LAYER_TYPES.includes(raw.type as LayerType)) {
      fail(
        "E_MODEL_LAYER",
        `layer '${name}' has type ${JSON.stringify(raw.type)}, which Flotilla cannot train (supported: ${LAYER_TYPES.join(", ")})`,
      );
    }
    const l = raw as unknown as LayerSpec;
    let inputs: string[];
    if (raw.inputs === undefined) inputs = [prev];
    else if (!Array.isArray(raw.inputs) || !raw.inputs.every((v) => typeof v === "string")) {
      return specErr(name, "inputs must be a list of layer names");
    } else inputs = [...(raw.inputs as string[])];
    const merge = l.type === "Add" || l.type === "Concatenate";
    if (merge ? inputs.length < 2 : inputs.length !== 1) {
      specErr(
        name,
        `${l.type} takes ${merge ? "2 or more inputs" : "exactly one input"}, got ${inputs.length}`,
      );
    }
    const inShapes = inputs.map((n) => {
      const sh = shapes.get(n);
      if (sh === undefined) specErr(name, `input '${n}' is not the model input or an earlier layer`);
      return sh;
    });
    for (const n of inputs) consumers.set(n, [...(consumers.get(n) ?? []), name]);
    const fromInput = inputs.includes(INPUT_NODE);
    if (l.type === "Embedding") {
      if (!(inputs.length === 1 && fromInput))
        specErr(name, "an Embedding must read the model input directly");
      if (inputDtype !== "int32")
        specErr(name, "an Embedding needs the model's inputDtype 'int32' (token ids)");
    } else if (fromInput && inputDtype === "int32") {
      specErr(name, "only Embedding layers can read an int32 model input");
    }
    const out = inferLayer(l, inShapes, tensors);
    shapes.set(name, out);
    infos.push({ layer: l, inputs, inShapes, outShape: out });
    prev = name;
  });
  const output = s.output ?? prev;
  if (typeof output !== "string" || output === INPUT_NODE || !shapes.has(output)) {
    fail("E_MODEL_SPEC", `model spec output ${JSON.stringify(output)} is not a layer of the graph`);
  }
  // Every layer must lead to the output: a dangling layer would hold weights that never train.
  const live = new Set<string>([output]);
  for (let i = infos.length - 1; i >= 0; i--) {
    const info = infos[i];
    if (!live.has(info.layer.name)) {
      fail("E_MODEL_SPEC", `layer '${info.layer.name}' does not lead to the model output '${output}'`);
    }
    for (const n of info.inputs) live.add(n);
  }
  if (output !== infos[infos.length - 1].layer.name) {
    fail("E_MODEL_SPEC", `layers after the output '${output}' do not lead to it`);
  }
  const outputShape = shapes.get(output) as readonly number[];
  const outLayer = infos[infos.length - 1].layer as unknown as Record<string, unknown>;
  const outAct = (outLayer.activation as ActivationName | undefined) ?? "linear";
  const task = s.task as Task;
  const loss = s.loss as LossName;
  const nc = s.numClasses;
  let head: GraphInfo["head"] = null;
  const lossFits =
    task === "classification"
      ? loss === "categorical_crossentropy" || loss === "sparse_categorical_crossentropy"
      : task === "binary"
        ? loss === "binary_crossentropy"
        : loss === "mse";
  if (!lossFits) fail("E_MODEL_SPEC", `loss '${loss}' does not fit task '${task}'`);
  const outAllowed = (acts: readonly string[]) => {
    if (!acts.includes(outAct)) {
      fail(
        "E_MODEL_SPEC",
        `task '${task}' needs an output activation of ${acts.join(" or ")}, got '${outAct}'`,
      );
    }
  };
  if (task === "classification") {
    outAllowed(["softmax", "linear"]);
    if (nc < 2) fail("E_MODEL_SPEC", "a classifier needs numClasses >= 2");
    if (!same(outputShape, [nc])) {
      fail("E_MODEL_SHAPE", `the output is [${outputShape}], a classifier of ${nc} classes needs [${nc}]`);
    }
    if (outAct === "softmax") head = "softmax";
  } else if (task === "binary") {
    outAllowed(["sigmoid", "linear"]);
    if (nc !== 2) fail("E_MODEL_SPEC", "a binary model has numClasses 2");
    if (!same(outputShape, [1]))
      fail("E_MODEL_SHAPE", `the output is [${outputShape}], a binary model needs [1]`);
    if (outAct === "sigmoid") head = "sigmoid";
  } else if (task === "regression") {
    if (!same(outputShape, [nc])) {
      fail("E_MODEL_SHAPE", `the output is [${outputShape}], a regression of ${nc} targets needs [${nc}]`);
    }
  } else if (size(outputShape) !== size(s.inputShape)) {
    fail(
      "E_MODEL_SHAPE",
      `the output [${outputShape}] does not have the input's ${size(s.inputShape)} values`,
    );
  }
  return { spec: s as GraphSpec, layers: infos, output, outputShape, head, tensors };
}

/** Checks a graph spec (see analyzeGraph) and returns it typed. */
export function validateGraph(spec: unknown): GraphSpec {
  return analyzeGraph(spec).spec;
}

/** The weight tensors of a graph in layout order. */
export function graphTensors(spec: GraphSpec): readonly GraphTensor[] {
  return analyzeGraph(spec).tensors;
}

/** Which layout entries (by index) belong to BatchNormalization layers. */
export function bnMask(tensors: readonly GraphTensor[]): boolean[] {
  return tensors.map((t) => t.bn);
}

/** An orthogonal matrix [rows, cols] (rows×cols row-major) as Keras's Orthogonal initializer (gain 1). */
function orthogonal(rows: number, cols: number, rng: Rng): Float32Array {
  // Keras: a = normal(rows, cols), transposed when rows < cols; q, r = qr(a); q *= sign(diag(r)); transpose back.
  // Modified Gram-Schmidt on a's columns gives q with diag(r) > 0, which is that q.
  const tall = rows >= cols;
  const m = tall ? rows : cols;
  const n = tall ? cols : rows;
  const a = new Float64Array(rows * cols);
  for (let i = 0; i < a.length; i++) a[i] = rng.normal();
  // col j of the tall matrix A [m, n]: tall: a[i*cols + j]; else A = aᵀ, A[i][j] = a[j*cols + i].
  const q = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) q[i * n + j] = tall ? a[i * cols + j] : a[j * cols + i];
  for (let j = 0; j < n; j++) {
    for (let k = 0; k < j; k++) {
      let dot = 0;
      for (let i = 0; i < m; i++) dot += q[i * n + k] * q[i * n + j];
      for (let i = 0; i < m; i++) q[i * n + j] -= dot * q[i * n + k];
    }
    let norm = 0;
    for (let i = 0; i < m; i++) norm += q[i * n + j] * q[i * n + j];
    norm = Math.sqrt(norm) || 1;
    for (let i = 0; i < m; i++) q[i * n + j] /= norm;
  }
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++)
    for (let j = 0; j < cols; j++) out[i * cols + j] = tall ? q[i * n + j] : q[j * n + i];
  return out;
}

/** Initial weights of a graph for a seed, in layout order (see the file comment). Pure JS, bit-identical. */
export function graphInitialWeights(tensors: readonly GraphTensor[], seed: number): Float32Array {
  const total = tensors.reduce((a, t) => a + size(t.shape), 0);
  const out = new Float32Array(total);
  const rng = new Rng(seed);
  let offset = 0;
  for (const t of tensors) {
    const n = size(t.shape);
    const init = t.init;
    switch (init.kind) {
      case "glorot": {
        const limit = Math.sqrt(6 / (init.fanIn + init.fanOut));
        for (let j = 0; j < n; j++) out[offset + j] = (2 * rng.next() - 1) * limit;
        break;
      }
      case "uniform":
        for (let j = 0; j < n; j++) out[offset + j] = (2 * rng.next() - 1) * init.limit;
        break;
      case "ones":
        out.fill(1, offset, offset + n);
        break;
      case "forgetBias":
        out.fill(1, offset + init.units, offset + 2 * init.units);
        break;
      case "orthogonal":
        out.set(orthogonal(size(t.shape.slice(0, -1)), t.shape[t.shape.length - 1], rng), offset);
        break;
      case "zeros":
        break;
    }
    offset += n;
  }
  return out;
}

/**
 * The weights a device trains from under the BatchNormalization policy "local" (FedBN, Li et al. 2021): the
 * incoming global model with every BN entry replaced by the device's own previous local values (when it has any).
 * Under "aggregate" (or with no previous local weights) the incoming weights as they are.
 */
export function bnLocalStart(
  layout: WeightLayout,
  mask: readonly boolean[],
  previousLocal: Float32Array | null,
  incoming: Float32Array,
  policy: BnPolicy = "local",
): Float32Array {
  const out = new Float32Array(incoming);
  if (policy !== "local" || previousLocal === null) return out;
  if (previousLocal.length !== layout.totalSize || incoming.length !== layout.totalSize) {
    fail(
      "E_MODEL_LAYOUT",
      `BN policy: weights have ${previousLocal.length} / ${incoming.length} values, the layout ${layout.totalSize}`,
    );
  }
  layout.entries.forEach((e, i) => {
    if (mask[i]) out.set(previousLocal.subarray(e.offset, e.offset + e.size), e.offset);
  });
  return out;
}

/** `weights` with every BN entry taken from `reference` (so an upload's BN deltas against it are zero). */
export function withBnFrom(
  layout: WeightLayout,
  mask: readonly boolean[],
  weights: Float32Array,
  reference: Float32Array,
): Float32Array {
  const out = new Float32Array(weights);
  layout.entries.forEach((e, i) => {
    if (mask[i]) out.set(reference.subarray(e.offset, e.offset + e.size), e.offset);
  });
  return out;
}

// ── presets as graphs ─────────────────────────────────────────────────────────────────────────────────────

/**
 * The layer graph of a built-in preset, with a weight layout identical to the preset's (`plan.ts`: same names,
 * shapes and order), so weights of one are weights of the other.
 */
export function presetGraph(p: PresetSpec): GraphSpec {
  const inputShape = [...p.inputShape];
  const inputSize = size(inputShape);
  const layers: LayerSpec[] = [];
  const flat = () => {
    if (inputShape.length > 1) layers.push({ name: "flatten", type: "Flatten" });
  };
  const base = { kind: "graph" as const, name: p.kind, inputShape };
  switch (p.kind) {
    case "mlp": {
      flat();
      const hidden = p.hidden ?? [200, 200];
      hidden.forEach((units, i) =>
        layers.push({ name: `dense_${i}`, type: "Dense", units, activation: "relu" }),
      );
      layers.push({
        name: `dense_${hidden.length}`,
        type: "Dense",
        units: p.numClasses,
        activation: "softmax",
      });
      return {
        ...base,
        layers,
        loss: "sparse_categorical_crossentropy",
        task: "classification",
        numClasses: p.numClasses,
      };
    }
    case "autoencoder": {
      flat();
      const hidden = p.hidden ?? [64, 16];
      hidden.forEach((units, i) =>
        layers.push({ name: `encoder_${i}`, type: "Dense", units, activation: "relu" }),
      );
      const widths = [...hidden.slice(0, -1).reverse(), inputSize];
      widths.forEach((units, i) =>
        layers.push({
          name: `decoder_${i}`,
          type: "Dense",
          units,
          activation: i < widths.length - 1 ? "relu" : "linear",
        }),
      );
      return { ...base, layers, loss: "mse", task: "reconstruction", numClasses: inputSize };
    }
    case "cnn": {
      const k = p.kernelSize ?? 5;
      (p.filters ?? [32, 64]).forEach((filters, i) => {
        layers.push({
          name: `conv_${i}`,
          type: "Conv2D",
          filters,
          kernelSize: [k, k],
          padding: "same",
          activation: "relu",
        });
        layers.push({ name: `pool_${i}`, type: "MaxPooling2D", poolSize: [2, 2] });
      });
      layers.push({ name: "flatten", type: "Flatten" });
      layers.push({ name: "dense_0", type: "Dense", units: p.dense ?? 512, activation: "relu" });
      layers.push({ name: "dense_1", type: "Dense", units: p.numClasses, activation: "softmax" });
      return {
        ...base,
        layers,
        loss: "sparse_categorical_crossentropy",
        task: "classification",
        numClasses: p.numClasses,
      };
    }
    case "cnn1d": {
      const k = p.kernelSize ?? 5;
      const filters = p.filters ?? [32, 64];
      filters.forEach((f, i) => {
        layers.push({
          name: `conv1d_${i}`,
          type: "Conv1D",
          filters: f,
          kernelSize: k,
          padding: "same",
          activation: "relu",
        });
        if (i < filters.length - 1) layers.push({ name: `pool_${i}`, type: "MaxPooling1D", poolSize: 2 });
      });
      layers.push({ name: "gap", type: "GlobalAveragePooling1D" });
      layers.push({ name: "dense_0", type: "Dense", units: p.numClasses, activation: "softmax" });
      return {
        ...base,
        layers,
        loss: "sparse_categorical_crossentropy",
        task: "classification",
        numClasses: p.numClasses,
      };
    }
    default:
      return fail("E_MODEL_SPEC", `unknown model kind '${String((p as { kind: unknown }).kind)}'`);
  }
}

interface Step {
  readonly layer: LayerSpec;
  readonly act: ActivationName;
}

/**
 * The preset whose fast path trains this graph exactly, or null. A graph matches when it is a plain chain (each
 * layer reads the previous one) with the preset's layer structure, options and shapes (layer names may differ; an
 * Activation layer after a linear layer counts as that layer's activation), the preset's task and loss, and no BN
 * layers or dropout. The preset's layout then has the graph's shapes in the graph's order.
 */
export function matchPreset(graph: GraphSpec): PresetSpec | null {
  const info = analyzeGraph(graph);
  const chain: Step[] = [];
  let prev = INPUT_NODE;
  for (const li of info.layers) {
    if (li.inputs.length !== 1 || li.inputs[0] !== prev) return null;
    prev = li.layer.name;
    const l = li.layer;
    if (l.type === "Activation") {
      const last = chain[chain.length - 1];
      if (last === undefined || last.act !== "linear" || !hasActivation(last.layer)) return null;
      chain[chain.length - 1] = { layer: last.layer, act: l.activation };
      continue;
    }
    const act = ((l as { activation?: ActivationName }).activation ?? "linear") as ActivationName;
    chain.push({ layer: l, act });
  }
  const inputShape = [...graph.inputShape];
  const nc = graph.numClasses;
  const dense = (st: Step | undefined, act: readonly ActivationName[]): number | null =>
    st !== undefined && st.layer.type === "Dense" && st.layer.useBias !== false && act.includes(st.act)
      ? st.layer.units
      : null;
  const headActs: ActivationName[] = ["softmax", "linear"];
  let i = 0;
  if (chain[0]?.layer.type === "Flatten") i = 1;
  const rest = chain.slice(i);
  const denseChain = rest.every((st) => st.layer.type === "Dense");
  const classifier = graph.task === "classification";
  // mlp / autoencoder: [Flatten] Dense+, flat input or a leading Flatten.
  if (denseChain && rest.length > 0 && (inputShape.length === 1 || i === 1)) {
    if (classifier) {
      const hidden: number[] = [];
      for (const st of rest.slice(0, -1)) {
        const u = dense(st, ["relu"]);
        if (u === null) return null;
        hidden.push(u);
      }
      if (dense(rest[rest.length - 1], headActs) !== nc) return null;
      return { kind: "mlp", inputShape, numClasses: nc, hidden };
    }
    if (graph.task === "reconstruction" && rest.length % 2 === 0) {
      const k = rest.length / 2;
      const widths: number[] = [];
      for (let j = 0; j < rest.length; j++) {
        const u = dense(rest[j], j === rest.length - 1 ? ["linear"] : ["relu"]);
        if (u === null) return null;
        widths.push(u);
      }
      const hidden = widths.slice(0, k);
      const expect = [...hidden, ...hidden.slice(0, -1).reverse(), size(inputShape)];
      if (!same(widths, expect)) return null;
      return { kind: "autoencoder", inputShape, numClasses: 2, hidden };
    }
    return null;
  }
  if (!classifier) return null;
  // cnn: (Conv2D k×k same relu, MaxPooling2D 2×2)+ Flatten Dense relu Dense.
  if (inputShape.length === 3 && chain[0]?.layer.type === "Conv2D") {
    const filters: number[] = [];
    let k = 0;
    let j = 0;
    while (chain[j]?.layer.type === "Conv2D") {
      const c = chain[j].layer;
      const p = chain[j + 1]?.layer;
      if (c.type !== "Conv2D" || p?.type !== "MaxPooling2D") return null;
      if (!conv2dPlain(c, chain[j].act) || (k !== 0 && c.kernelSize[0] !== k)) return null;
      if (!pool2(p.poolSize, p.strides, p.padding)) return null;
      k = c.kernelSize[0];
      filters.push(c.filters);
      j += 2;
    }
    if (chain.length !== j + 3 || chain[j].layer.type !== "Flatten") return null;
    const width = dense(chain[j + 1], ["relu"]);
    if (width === null || dense(chain[j + 2], headActs) !== nc) return null;
    return { kind: "cnn", inputShape, numClasses: nc, filters, kernelSize: k, dense: width };
  }
  // cnn1d: Conv1D k same relu, (MaxPooling1D 2, Conv1D)*, GlobalAveragePooling1D, Dense.
  if (inputShape.length === 2 && chain[0]?.layer.type === "Conv1D") {
    const filters: number[] = [];
    let k = 0;
    let j = 0;
    for (;;) {
      const c = chain[j]?.layer;
      if (c?.type !== "Conv1D") return null;
      const plain =
        chain[j].act === "relu" &&
        (c.padding ?? "valid") === "same" &&
        (c.strides ?? 1) === 1 &&
        (c.dilationRate ?? 1) === 1 &&
        c.useBias !== false;
      if (!plain || (k !== 0 && c.kernelSize !== k)) return null;
      k = c.kernelSize;
      filters.push(c.filters);
      const p = chain[j + 1]?.layer;
      if (p?.type !== "MaxPooling1D") {
        j += 1;
        break;
      }
      if (p.poolSize !== 2 || (p.strides ?? 2) !== 2 || (p.padding ?? "valid") !== "valid") return null;
      j += 2;
    }
    if (chain.length !== j + 2 || chain[j].layer.type !== "GlobalAveragePooling1D") return null;
    if (dense(chain[j + 1], headActs) !== nc) return null;
    return { kind: "cnn1d", inputShape, numClasses: nc, filters, kernelSize: k };
  }
  return null;
}

function hasActivation(l: LayerSpec): boolean {
  return ["Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D"].includes(l.type);
}

function conv2dPlain(c: Extract<LayerSpec, { type: "Conv2D" }>, act: ActivationName): boolean {
  const [sh, sw] = c.strides ?? [1, 1];
  const [dh, dw] = c.dilationRate ?? [1, 1];
  return (
    act === "relu" &&
    c.kernelSize[0] === c.kernelSize[1] &&
    (c.padding ?? "valid") === "same" &&
    sh === 1 &&
    sw === 1 &&
    dh === 1 &&
    dw === 1 &&
    c.useBias !== false
  );
}

function pool2(
  p: readonly [number, number],
  s: readonly [number, number] | undefined,
  pad: Padding | undefined,
): boolean {
  const [sh, sw] = s ?? p;
  return p[0] === 2 && p[1] === 2 && sh === 2 && sw === 2 && (pad ?? "valid") === "valid";
}

/** The preset kinds, for callers that only need to know whether a spec is one. */
export function isPresetKind(kind: unknown): kind is ModelKind {
  return kind === "mlp" || kind === "cnn" || kind === "cnn1d" || kind === "autoencoder";
}

/**
 * Multiply-accumulates of one sample's forward pass through the graph's weighted layers (dense, convolutions,
 * recurrent cells); pooling, normalisation and element-wise work are left out. The generic path uses it to decide
 * whether a training step is large enough to gain from the XNNPACK thread pool (docs/threads.md).
 */
export function graphMacs(info: GraphInfo): number {
  let macs = 0;
  const positions = (s: readonly number[]) => s.slice(0, -1).reduce((a, b) => a * b, 1);
  for (const li of info.layers) {
    const l = li.layer;
    const inShape = li.inShapes[0] ?? [];
    const cin = inShape[inShape.length - 1] ?? 0;
    const at = positions(li.outShape);
    switch (l.type) {
      case "Dense":
        macs += cin * l.units * at;
        break;
      case "Conv1D":
        macs += l.kernelSize * cin * l.filters * at;
        break;
      case "Conv2D":
        macs += l.kernelSize[0] * l.kernelSize[1] * cin * l.filters * at;
        break;
      case "DepthwiseConv2D":
        macs += l.kernelSize[0] * l.kernelSize[1] * cin * (l.depthMultiplier ?? 1) * at;
        break;
      case "SeparableConv2D": {
        const mid = cin * (l.depthMultiplier ?? 1);
        macs += (l.kernelSize[0] * l.kernelSize[1] * mid + mid * l.filters) * at;
        break;
      }
      case "LSTM":
      case "GRU":
        macs += (l.type === "LSTM" ? 4 : 3) * l.units * (cin + l.units) * (inShape[0] ?? 1);
        break;
      default:
        break;
    }
  }
  return macs;
}
