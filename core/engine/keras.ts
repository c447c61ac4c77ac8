/**
 * Bring your own model (issue 14, docs/byom.md): a Keras / TensorFlow.js Layers model — `model.json` (its
 * `modelTopology` and `weightsManifest`, what `tensorflowjs_converter` and tfjs `model.save()` write) plus its
 * binary weight shards — becomes a Flotilla layer graph (`graph-spec.ts`) and one flat Float32Array of weights in
 * the graph's layout (`modelLayout(spec)`); and the reverse, a graph and its weights as a tfjs-loadable model.json
 * + weights.bin. Pure JS (no tfjs): the Function imports models it is given without loading TensorFlow.js.
 *
 * Formats read (the TensorFlow.js "layers-model" format, https://www.tensorflow.org/js/guide/save_load, and the
 * Keras model config, https://keras.io/api/models/model_saving_apis/model_config_serialization/):
 * - `modelTopology` as `{class_name, config}` (tfjs, Keras 3) or `{model_config: {class_name, config},
 *   training_config}` (tensorflowjs_converter of a Keras 2 HDF5 file);
 * - Sequential (`config.layers`, or a bare list) and Functional (`class_name` Model / Functional, `layers` with
 *   `inbound_nodes`, `input_layers`, `output_layers`) configs, including a Sequential nested as a layer;
 * - Keras 2 / tfjs `inbound_nodes` (`[[["name", 0, 0, {}], ...]]`) and Keras 3 ones (`[{args: [...], kwargs}]` whose
 *   tensors are `{class_name: "__keras_tensor__", config: {keras_history: ["name", 0, 0]}}`);
 * - weights: `weightsManifest` groups of float32 tensors, each group's `paths` concatenated; weights are matched to
 *   the graph's layout by name (`<layer>/<weight>`, also `<model>/<layer>/<cell>/<weight>` and a `:0` suffix).
 *
 * Everything a graph cannot express is refused with a one-line coded error naming the layer (never dropped):
 * E_MODEL_LAYER (an unsupported layer class or option, e.g. regularizers, constraints, frozen layers, dilated
 * depthwise convolutions, channels_first, masking, stateful or dropout-in-the-cell RNNs), E_MODEL_IMPORT (not a
 * Layers model, several inputs or outputs, shared layers), E_MODEL_WEIGHTS (a missing, misshapen, quantized or
 * non-float32 weight, a short shard), E_MODEL_LOSS (a loss other than the four of graph-spec.ts).
 *
 * Loss and task: the option given, else the model's `training_config` / `trainingConfig` loss, else inferred from
 * the output activation: softmax → sparse categorical cross-entropy (classification), sigmoid with one unit →
 * binary cross-entropy (binary), anything else → mse (reconstruction when the output has the input's size, else
 * regression). A cross-entropy compiled `from_logits` on a linear output gets the softmax (sigmoid) activation put
 * on that output layer: the graph's output is then probabilities, and training is the same.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { fail } from "../errors";
import {
  INPUT_NODE,
  type ActivationName,
  type BnPolicy,
  type GraphSpec,
  type LayerSpec,
  type LossName,
  type Padding,
  type Task,
} from "./graph-spec";
import { analyzeGraph, validateGraph, type GraphInfo } from "./graph";
import { modelLayout } from "./plan";

/** One tensor of a weights manifest group (tf.io.WeightsManifestEntry). */
export interface KerasWeightEntry {
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: string;
  readonly quantization?: unknown;
  /** "optimizer" for an optimizer's weights (tfjs `includeOptimizer`). */
  readonly group?: string;
}

export interface KerasManifestGroup {
  readonly paths: readonly string[];
  readonly weights: readonly KerasWeightEntry[];
}

export interface KerasImportOptions {
  /** Overrides the model's training_config loss and the inferred one. */
  readonly loss?: LossName;
  /** Overrides the task the loss implies (e.g. "reconstruction" for an autoencoder compiled with mse). */
  readonly task?: Task;
  readonly bnPolicy?: BnPolicy;
}

/** A Keras model as a graph (no weights): what the simulator's workers and job validation need. */
export interface KerasGraph {
  readonly spec: GraphSpec;
  /** The model.json's weight groups (shard paths are relative to model.json). */
  readonly manifest: readonly KerasManifestGroup[];
  /** Graph layer name → the Keras layer name its weights are saved under (they differ only for a renamed layer). */
  readonly kerasNames: ReadonlyMap<string, string>;
  /** "keras3" when the file uses Keras 3's inbound_nodes, else "keras2" (tfjs and Keras 2 alike). */
  readonly style: "keras2" | "keras3";
}

export interface ImportedModel {
  readonly spec: GraphSpec;
  /** In the layout of modelLayout(spec). */
  readonly weights: Float32Array;
}

type Json = Record<string, unknown>;

const isObj = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

function importFail(msg: string): never {
  return fail("E_MODEL_IMPORT", msg);
}

// ── activations ──────────────────────────────────────────────────────────────────────────────────────────

const ACTIVATIONS: Readonly<Record<string, ActivationName>> = {
  linear: "linear",
  relu: "relu",
  relu6: "relu6",
  elu: "elu",
  selu: "selu",
  sigmoid: "sigmoid",
  hard_sigmoid: "hard_sigmoid",
  hardsigmoid: "hard_sigmoid",
  tanh: "tanh",
  softmax: "softmax",
  softplus: "softplus",
  softsign: "softsign",
  swish: "swish",
  silu: "swish",
};

// ── one Keras layer's config ─────────────────────────────────────────────────────────────────────────────

/** Keys of every layer's config that change nothing once the weights are given. */
const HARMLESS = new Set([
  "name",
  "dtype",
  "trainable",
  "batch_input_shape",
  "batch_shape",
  "input_shape",
  "kernel_initializer",
  "bias_initializer",
  "recurrent_initializer",
  "depthwise_initializer",
  "pointwise_initializer",
  "embeddings_initializer",
  "beta_initializer",
  "gamma_initializer",
  "moving_mean_initializer",
  "moving_variance_initializer",
  "seed",
  "implementation",
  "unroll",
  "input_length",
]);

/** Options whose value must be null (regularizers and constraints change training: refused when set). */
const MUST_BE_NULL = [
  "kernel_regularizer",
  "bias_regularizer",
  "activity_regularizer",
  "recurrent_regularizer",
  "depthwise_regularizer",
  "pointwise_regularizer",
  "embeddings_regularizer",
  "beta_regularizer",
  "gamma_regularizer",
  "kernel_constraint",
  "bias_constraint",
  "recurrent_constraint",
  "depthwise_constraint",
  "pointwise_constraint",
  "embeddings_constraint",
  "beta_constraint",
  "gamma_constraint",
  "noise_shape",
];

/** Reads one layer's config; `done()` refuses any option left unread whose value is not null/false/empty. */
class LayerConfig {
  private readonly used = new Set<string>(HARMLESS);
  constructor(
    readonly name: string,
    readonly cls: string,
    private readonly c: Json,
  ) {
    for (const k of MUST_BE_NULL) {
      this.used.add(k);
      const v = c[k];
      if (v !== undefined && v !== null) this.refuse(`${k} is not supported (regularizers and constraints)`);
    }
    if (c.trainable === false) this.refuse("frozen layers (trainable: false) are not supported");
    this.used.add("data_format");
    if (c.data_format !== undefined && c.data_format !== null && c.data_format !== "channels_last")
      this.refuse(`data_format ${JSON.stringify(c.data_format)} is not supported (channels_last only)`);
  }

  refuse(why: string): never {
    return fail("E_MODEL_LAYER", `layer '${this.name}' (${this.cls}): ${why}`);
  }

  raw(key: string): unknown {
    this.used.add(key);
    return this.c[key];
  }

  int(key: string, dflt?: number): number {
    let v = this.raw(key);
    if (Array.isArray(v) && v.length === 1) v = v[0];
    if (v === undefined || v === null) {
      if (dflt !== undefined) return dflt;
      this.refuse(`needs ${key}`);
    }
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1)
      this.refuse(`${key} must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  }

  pair(key: string, dflt?: readonly [number, number]): [number, number] {
    const v = this.raw(key);
    if (v === undefined || v === null) {
      if (dflt !== undefined) return [dflt[0], dflt[1]];
      this.refuse(`needs ${key}`);
    }
    const a = typeof v === "number" ? [v, v] : v;
    if (
      !Array.isArray(a) ||
      a.length !== 2 ||
      a.some((d) => typeof d !== "number" || !Number.isInteger(d) || d < 1)
    )
      this.refuse(`${key} must be a positive integer or a pair of them, got ${JSON.stringify(v)}`);
    return [a[0] as number, a[1] as number];
  }

  num(key: string, dflt: number): number {
    const v = this.raw(key);
    if (v === undefined || v === null) return dflt;
    if (typeof v !== "number" || !Number.isFinite(v))
      this.refuse(`${key} must be a number, got ${JSON.stringify(v)}`);
    return v;
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.raw(key);
    if (v === undefined || v === null) return dflt;
    if (typeof v !== "boolean") this.refuse(`${key} must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  /** A boolean option that must have this value (the graph has no other). */
  only(key: string, value: boolean, why: string): void {
    if (this.bool(key, value) !== value)
      this.refuse(`${key}: ${JSON.stringify(!value)} is not supported (${why})`);
  }

  activation(key = "activation", dflt: ActivationName = "linear"): ActivationName {
    let v = this.raw(key);
    if (v === undefined || v === null) return dflt;
    if (isObj(v) && typeof v.class_name === "string") v = v.class_name; // {class_name: "relu"} forms
    if (typeof v !== "string") this.refuse(`${key} must be an activation name, got ${JSON.stringify(v)}`);
    const a = ACTIVATIONS[v] ?? ACTIVATIONS[v.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase()];
    if (!a)
      this.refuse(
        `${key} '${v}' is not supported (supported: ${[...new Set(Object.values(ACTIVATIONS))].join(", ")})`,
      );
    return a;
  }

  padding(): Padding {
    const v = this.raw("padding") ?? "valid";
    if (v !== "valid" && v !== "same")
      this.refuse(`padding ${JSON.stringify(v)} is not supported (valid or same)`);
    return v;
  }

  /** An option that must be null or absent. */
  absent(key: string, what: string): void {
    const v = this.raw(key);
    if (v !== null && v !== undefined) this.refuse(`${key} is not supported (${what})`);
  }

  /** Dilation must be 1 (for layers whose graph form has no dilation). */
  noDilation(): void {
    const d = this.raw("dilation_rate");
    const ones = d === undefined || d === null || d === 1 || (Array.isArray(d) && d.every((x) => x === 1));
    if (!ones) this.refuse(`dilation_rate ${JSON.stringify(d)} is not supported`);
  }

  /** Refuses the options nobody read, unless null, false or empty. */
  done(): void {
    for (const [k, v] of Object.entries(this.c)) {
      if (this.used.has(k)) continue;
      const empty = v === null || v === false || (isObj(v) && Object.keys(v).length === 0);
      if (!empty) this.refuse(`option ${k} = ${JSON.stringify(v).slice(0, 60)} is not supported`);
    }
  }
}

/** A layer of the graph before its edges are set; `axis` is checked against the input rank once shapes are known. */
interface Pending {
  readonly spec: LayerSpec;
  /** BatchNormalization / Concatenate: the Keras axis (positive axes must be the last one). */
  readonly axis?: number;
}

function mapLayer(cls: string, name: string, config: Json): Pending {
  const c = new LayerConfig(name, cls, config);
  let spec: LayerSpec;
  let axis: number | undefined;
  const bias = () => c.bool("use_bias", true);
  switch (cls) {
    case "Dense":
      spec = { type: "Dense", name, units: c.int("units"), activation: c.activation(), useBias: bias() };
      break;
    case "Conv1D": {
      if (c.int("groups", 1) !== 1) c.refuse("grouped convolutions (groups > 1) are not supported");
      const padding = c.raw("padding");
      if (padding === "causal") c.refuse("padding 'causal' is not supported (valid or same)");
      spec = {
        type: "Conv1D",
        name,
        filters: c.int("filters"),
        kernelSize: c.int("kernel_size"),
        strides: c.int("strides", 1),
        padding: c.padding(),
        dilationRate: c.int("dilation_rate", 1),
        activation: c.activation(),
        useBias: bias(),
      };
      break;
    }
    case "Conv2D":
      if (c.int("groups", 1) !== 1) c.refuse("grouped convolutions (groups > 1) are not supported");
      spec = {
        type: "Conv2D",
        name,
        filters: c.int("filters"),
        kernelSize: c.pair("kernel_size"),
        strides: c.pair("strides", [1, 1]),
        padding: c.padding(),
        dilationRate: c.pair("dilation_rate", [1, 1]),
        activation: c.activation(),
        useBias: bias(),
      };
      break;
    case "DepthwiseConv2D":
      c.noDilation();
      spec = {
        type: "DepthwiseConv2D",
        name,
        kernelSize: c.pair("kernel_size"),
        strides: c.pair("strides", [1, 1]),
        padding: c.padding(),
        depthMultiplier: c.int("depth_multiplier", 1),
        activation: c.activation(),
        useBias: bias(),
      };
      break;
    case "SeparableConv2D":
      c.noDilation();
      spec = {
        type: "SeparableConv2D",
        name,
        filters: c.int("filters"),
        kernelSize: c.pair("kernel_size"),
        strides: c.pair("strides", [1, 1]),
        padding: c.padding(),
        depthMultiplier: c.int("depth_multiplier", 1),
        activation: c.activation(),
        useBias: bias(),
      };
      break;
    case "MaxPooling1D":
    case "AveragePooling1D":
    case "MaxPool1D":
    case "AvgPool1D": {
      const type = cls.startsWith("Max") ? "MaxPooling1D" : "AveragePooling1D";
      const poolSize = c.int("pool_size", 2);
      spec = { type, name, poolSize, strides: c.int("strides", poolSize), padding: c.padding() };
      break;
    }
    case "MaxPooling2D":
    case "AveragePooling2D":
    case "MaxPool2D":
    case "AvgPool2D": {
      const type = cls.startsWith("Max") ? "MaxPooling2D" : "AveragePooling2D";
      const poolSize = c.pair("pool_size", [2, 2]);
      spec = { type, name, poolSize, strides: c.pair("strides", poolSize), padding: c.padding() };
      break;
    }
    case "GlobalAveragePooling1D":
    case "GlobalAveragePooling2D":
    case "GlobalAvgPool1D":
    case "GlobalAvgPool2D":
      c.only("keepdims", false, "the pooled axes are dropped");
      spec = { type: cls.endsWith("1D") ? "GlobalAveragePooling1D" : "GlobalAveragePooling2D", name };
      break;
    case "Flatten":
      spec = { type: "Flatten", name };
      break;
    case "Reshape": {
      const t = c.raw("target_shape");
      if (
        !Array.isArray(t) ||
        t.some((d) => typeof d !== "number" || !Number.isInteger(d) || (d < 1 && d !== -1))
      )
        c.refuse(`target_shape must be positive integers (one may be -1), got ${JSON.stringify(t)}`);
      spec = { type: "Reshape", name, targetShape: t as number[] };
      break;
    }
    case "Dropout": {
      const rate = c.num("rate", 0);
      if (!(rate >= 0 && rate < 1)) c.refuse(`rate must be in [0, 1), got ${rate}`);
      spec = { type: "Dropout", name, rate };
      break;
    }
    case "BatchNormalization": {
      const a = c.raw("axis");
      const ax = Array.isArray(a) && a.length === 1 ? a[0] : (a ?? -1);
      if (typeof ax !== "number" || !Number.isInteger(ax))
        c.refuse(`axis ${JSON.stringify(a)} is not supported (the last axis only)`);
      axis = ax;
      c.only("renorm", false, "batch renormalization");
      c.raw("renorm_clipping");
      c.raw("renorm_momentum");
      c.raw("fused");
      c.absent("virtual_batch_size", "ghost batch normalization");
      c.absent("adjustment", "a custom adjustment");
      c.only("synchronized", false, "synchronized batch statistics");
      spec = {
        type: "BatchNormalization",
        name,
        axis: -1,
        momentum: c.num("momentum", 0.99),
        epsilon: c.num("epsilon", 0.001),
        center: c.bool("center", true),
        scale: c.bool("scale", true),
      };
      break;
    }
    case "Activation":
      spec = { type: "Activation", name, activation: c.activation("activation") };
      break;
    case "ReLU": {
      // keras.layers.ReLU() with its defaults is relu; max_value 6 is relu6.
      const max = c.raw("max_value");
      const slope = c.num("negative_slope", 0);
      const threshold = c.num("threshold", 0);
      if (slope !== 0 || threshold !== 0 || (max !== null && max !== undefined && max !== 6))
        c.refuse("only ReLU() and ReLU(max_value=6) are supported");
      spec = { type: "Activation", name, activation: max === 6 ? "relu6" : "relu" };
      break;
    }
    case "Softmax": {
      const a = c.raw("axis");
      if (a !== undefined && a !== null && a !== -1 && !(Array.isArray(a) && a.length === 1 && a[0] === -1))
        c.refuse(`axis ${JSON.stringify(a)} is not supported (-1 only)`);
      spec = { type: "Activation", name, activation: "softmax" };
      break;
    }
    case "LSTM":
    case "GRU": {
      c.only("return_state", false, "one output per layer");
      c.only("go_backwards", false, "forward sequences only");
      c.only("stateful", false, "stateless RNNs only");
      c.only("time_major", false, "batch-major sequences only");
      c.raw("use_cudnn");
      if (c.num("dropout", 0) !== 0 || c.num("recurrent_dropout", 0) !== 0)
        c.refuse(
          "dropout inside the cell (dropout, recurrent_dropout) is not supported; use a Dropout layer",
        );
      const common = {
        name,
        units: c.int("units"),
        activation: c.activation("activation", "tanh"),
        recurrentActivation: c.activation("recurrent_activation", "sigmoid"),
        returnSequences: c.bool("return_sequences", false),
        useBias: bias(),
      };
      spec =
        cls === "LSTM"
          ? { type: "LSTM", ...common, unitForgetBias: c.bool("unit_forget_bias", true) }
          : // Keras 2+ defaults reset_after to true; a config without the key is from an older Keras (false).
            { type: "GRU", ...common, resetAfter: c.bool("reset_after", false) };
      break;
    }
    case "Embedding":
      c.only("mask_zero", false, "masking is not supported");
      spec = { type: "Embedding", name, inputDim: c.int("input_dim"), outputDim: c.int("output_dim") };
      break;
    case "Add":
      spec = { type: "Add", name };
      break;
    case "Concatenate": {
      const a = c.raw("axis") ?? -1;
      if (typeof a !== "number" || !Number.isInteger(a))
        return c.refuse(`axis ${JSON.stringify(a)} is not supported`);
      axis = a;
      spec = { type: "Concatenate", name, axis: -1 };
      break;
    }
    default:
      return fail(
        "E_MODEL_LAYER",
        `layer '${name}' (${cls}): layer class ${cls} is not supported (docs/byom.md lists the supported layers)`,
      );
  }
  c.done();
  return axis === undefined ? { spec } : { spec, axis };
}

// ── topology ─────────────────────────────────────────────────────────────────────────────────────────────

interface RawLayer {
  readonly cls: string;
  readonly name: string;
  readonly config: Json;
  /** Source layer names (Keras names), in call order; undefined = sequential (the previous layer). */
  readonly inbound?: string[];
}

interface Topology {
  readonly name?: string;
  readonly layers: RawLayer[];
  readonly inputName: string | null;
  readonly inputShape: readonly number[] | null;
  readonly inputDtype: string | null;
  readonly output: string | null;
  readonly style: "keras2" | "keras3";
}

/** The [name, node, tensor] of a Keras 3 `__keras_tensor__` or a Keras 2 node entry. */
function history(layer: string, entry: unknown): string {
  if (!Array.isArray(entry) || typeof entry[0] !== "string")
    importFail(`layer '${layer}': an inbound node entry is not [name, node, tensor]`);
  if ((entry[1] ?? 0) !== 0)
    importFail(`layer '${layer}': shared layers (called more than once) are not supported`);
  if ((entry[2] ?? 0) !== 0)
    importFail(
      `layer '${layer}': reads output ${String(entry[2])} of '${entry[0]}' (multi-output layers are not supported)`,
    );
  return entry[0];
}

/** Keras 3: every keras tensor among `args` (nested lists included), in order. */
function kerasTensors(layer: string, v: unknown, out: string[]): void {
  if (Array.isArray(v)) {
    for (const x of v) kerasTensors(layer, x, out);
  } else if (isObj(v) && v.class_name === "__keras_tensor__") {
    const cfg = v.config;
    out.push(history(layer, isObj(cfg) ? cfg.keras_history : undefined));
  }
}

function inboundOf(name: string, nodes: unknown): { names: string[]; style: "keras2" | "keras3" } {
  if (!Array.isArray(nodes)) importFail(`layer '${name}': inbound_nodes must be a list`);
  if (nodes.length === 0) return { names: [], style: "keras2" };
  if (nodes.length > 1) importFail(`layer '${name}' is shared (called ${nodes.length} times): not supported`);
  const node = nodes[0];
  if (isObj(node)) {
    const out: string[] = [];
    kerasTensors(name, node.args, out);
    if (isObj(node.kwargs)) {
      for (const [k, v] of Object.entries(node.kwargs)) {
        const t: string[] = [];
        kerasTensors(name, v, t);
        if (t.length > 0 || (k === "mask" && v !== null))
          importFail(`layer '${name}': call argument '${k}' is not supported`);
      }
    }
    return { names: out, style: "keras3" };
  }
  if (!Array.isArray(node)) importFail(`layer '${name}': an inbound node must be a list or an object`);
  return { names: node.map((e) => history(name, e)), style: "keras2" };
}

function shapeOf(c: Json): { shape: number[]; dtype: string | null } | null {
  const s = c.batch_input_shape ?? c.batch_shape;
  if (Array.isArray(s)) {
    const rest = s.slice(1);
    if (rest.some((d) => typeof d !== "number" || !Number.isInteger(d) || d < 1))
      importFail(
        `input shape ${JSON.stringify(s)}: every dimension but the batch must be a fixed positive integer`,
      );
    const dt = c.dtype;
    const dtype = typeof dt === "string" ? dt : isObj(dt) && isObj(dt.config) ? String(dt.config.name) : null;
    return { shape: rest as number[], dtype };
  }
  return null;
}

/** Output of a functional config's input_layers / output_layers: [[name, 0, 0]] or Keras 3's [name, 0, 0]. */
function endpoints(v: unknown, what: string): string[] {
  if (!Array.isArray(v)) return importFail(`model config ${what} must be a list`);
  if (v.length >= 1 && typeof v[0] === "string") return [history(what, v)];
  return v.map((e) => history(what, e));
}

function classOf(l: Json): string {
  if (typeof l.class_name !== "string") importFail("a layer has no class_name");
  return l.class_name;
}

/** Flattens a Sequential's layers (nested Sequentials included) into chain layers. */
function sequentialLayers(layers: unknown, top: Topology & { layers: RawLayer[] }, path: string): void {
  if (!Array.isArray(layers)) importFail(`${path}: Sequential layers must be a list`);
  for (const l of layers) {
    if (!isObj(l)) importFail(`${path}: a layer must be an object`);
    const cls = classOf(l);
    const cfg = isObj(l.config) ? l.config : {};
    const name = typeof cfg.name === "string" ? cfg.name : typeof l.name === "string" ? l.name : "";
    if (!name) importFail(`${path}: a ${cls} layer has no name`);
    const first = top.layers.length === 0 && top.inputName === null;
    if (cls === "InputLayer") {
      if (!first) importFail(`${path}: InputLayer '${name}' is not the first layer`);
      const s = shapeOf(cfg);
      if (!s) importFail(`InputLayer '${name}' has no batch_input_shape / batch_shape`);
      Object.assign(top, { inputName: name, inputShape: s.shape, inputDtype: s.dtype });
      continue;
    }
    if (cls === "Sequential") {
      sequentialLayers(
        isObj(l.config) && Array.isArray(l.config.layers) ? l.config.layers : l.config,
        top,
        name,
      );
      continue;
    }
    if (cls === "Model" || cls === "Functional")
      importFail(`layer '${name}' (${cls}): a functional model nested in a model is not supported`);
    if (first) {
      const s = shapeOf(cfg);
      if (s) Object.assign(top, { inputShape: s.shape, inputDtype: s.dtype });
    }
    top.layers.push({ cls, name, config: cfg });
  }
}

function readTopology(modelTopology: unknown): Topology {
  if (!isObj(modelTopology)) importFail("model.json has no modelTopology object (not a Layers model)");
  const root = isObj(modelTopology.model_config) ? modelTopology.model_config : modelTopology;
  const cls = root.class_name;
  const cfg = root.config;
  if (cls === "Sequential") {
    const top = {
      name: isObj(cfg) && typeof cfg.name === "string" ? cfg.name : undefined,
      layers: [] as RawLayer[],
      inputName: null,
      inputShape: null,
      inputDtype: null,
      output: null,
      style: "keras2" as const,
    };
    sequentialLayers(isObj(cfg) ? cfg.layers : cfg, top, "Sequential");
    if (top.layers.length === 0) importFail("the Sequential model has no layers");
    return top;
  }
  if (cls !== "Model" && cls !== "Functional") {
    return importFail(
      `modelTopology class_name ${JSON.stringify(cls)} is not a Keras model (Sequential, Model or Functional); a graph model (tf.saved_model) is not a Layers model`,
    );
  }
  if (!isObj(cfg) || !Array.isArray(cfg.layers))
    return importFail("the functional model config has no layers list");
  const inputs = endpoints(cfg.input_layers, "input_layers");
  const outputs = endpoints(cfg.output_layers, "output_layers");
  if (inputs.length !== 1) importFail(`the model has ${inputs.length} inputs (one input only)`);
  if (outputs.length !== 1) importFail(`the model has ${outputs.length} outputs (one output only)`);
  let style: "keras2" | "keras3" = "keras2";
  let inputShape: number[] | null = null;
  let inputDtype: string | null = null;
  const layers: RawLayer[] = [];
  for (const l of cfg.layers) {
    if (!isObj(l)) importFail("a layer must be an object");
    const lc = classOf(l);
    const lcfg = isObj(l.config) ? l.config : {};
    const name = typeof l.name === "string" ? l.name : typeof lcfg.name === "string" ? lcfg.name : "";
    if (!name) importFail(`a ${lc} layer has no name`);
    const inbound = inboundOf(name, l.inbound_nodes ?? []);
    if (inbound.style === "keras3") style = "keras3";
    if (lc === "InputLayer") {
      if (name !== inputs[0]) importFail(`InputLayer '${name}' is not the model's input`);
      const s = shapeOf(lcfg);
      if (!s) importFail(`InputLayer '${name}' has no batch_input_shape / batch_shape`);
      inputShape = s.shape;
      inputDtype = s.dtype;
      continue;
    }
    if (lc === "Sequential" || lc === "Model" || lc === "Functional")
      importFail(`layer '${name}' (${lc}): a model nested in a functional model is not supported`);
    if (inbound.names.length === 0) importFail(`layer '${name}' (${lc}) has no inbound node`);
    layers.push({ cls: lc, name, config: lcfg, inbound: inbound.names });
  }
  return {
    name: typeof cfg.name === "string" ? cfg.name : undefined,
    layers,
    inputName: inputs[0],
    inputShape,
    inputDtype,
    output: outputs[0],
    style,
  };
}

// ── loss ─────────────────────────────────────────────────────────────────────────────────────────────────

const LOSSES: Readonly<Record<string, LossName>> = {
  categoricalcrossentropy: "categorical_crossentropy",
  sparsecategoricalcrossentropy: "sparse_categorical_crossentropy",
  binarycrossentropy: "binary_crossentropy",
  mse: "mse",
  meansquarederror: "mse",
};

/** The loss of a training_config (string, {class_name, config} or a one-output dict/list); null when none. */
function configLoss(tc: unknown): { loss: LossName; fromLogits: boolean } | null {
  if (!isObj(tc) || tc.loss === undefined || tc.loss === null) return null;
  let l: unknown = tc.loss;
  if (Array.isArray(l))
    l = l.length === 1 ? l[0] : importFail("training_config has one loss per output: one output only");
  if (isObj(l) && l.class_name === undefined) {
    const v = Object.values(l);
    l = v.length === 1 ? v[0] : importFail("training_config has one loss per output: one output only");
  }
  let name: unknown = l;
  let fromLogits = false;
  if (isObj(l)) {
    name = l.class_name;
    const c = isObj(l.config) ? l.config : {};
    fromLogits = c.from_logits === true;
  }
  if (typeof name !== "string")
    return importFail(`training_config loss ${JSON.stringify(l)} is not a loss name`);
  const loss = LOSSES[name.replace(/_/g, "").toLowerCase()];
  if (!loss)
    return fail(
      "E_MODEL_LOSS",
      `loss '${name}' is not supported (categorical_crossentropy, sparse_categorical_crossentropy, binary_crossentropy, mse)`,
    );
  return { loss, fromLogits };
}

// ── model.json → graph ───────────────────────────────────────────────────────────────────────────────────

function manifestOf(modelJson: Json): KerasManifestGroup[] {
  const m = modelJson.weightsManifest;
  if (m === undefined) return [];
  if (!Array.isArray(m)) importFail("weightsManifest must be a list");
  return m.map((g, i) => {
    if (!isObj(g) || !Array.isArray(g.paths) || !Array.isArray(g.weights))
      importFail(`weightsManifest[${i}] needs paths and weights lists`);
    for (const w of g.weights as unknown[]) {
      if (!isObj(w) || typeof w.name !== "string" || !Array.isArray(w.shape))
        importFail(`weightsManifest[${i}]: a weight needs a name and a shape`);
    }
    return g as unknown as KerasManifestGroup;
  });
}

/** Layer names of the probe analyzeGraph gets to infer the shapes of a graph whose task is not known yet. */
const PROBE = ["__flotilla_probe_flatten", "__flotilla_probe_dense"] as const;

/**
 * Every layer's inferred input and output shapes (graph.ts analyzeGraph, the one shape inference). The task checks
 * of analyzeGraph need the output width, which is what we want to learn: the probe reads the graph's output
 * through Flatten → Dense(1) and is analysed as a one-target regression.
 */
function probeShapes(draft: GraphSpec): GraphInfo {
  const out = draft.output ?? draft.layers[draft.layers.length - 1].name;
  return analyzeGraph({
    ...draft,
    layers: [
      ...draft.layers,
      { type: "Flatten", name: PROBE[0], inputs: [out] },
      { type: "Dense", name: PROBE[1], units: 1 },
    ],
    output: PROBE[1],
    loss: "mse",
    task: "regression",
    numClasses: 1,
  });
}

/**
 * The graph of a Keras / tfjs Layers model.json (parsed JSON), without reading any weights. Throws E_MODEL_IMPORT,
 * E_MODEL_LAYER or E_MODEL_LOSS (one line) for anything the graph cannot express, and graph.ts's E_MODEL_SPEC /
 * E_MODEL_SHAPE for shapes that do not fit.
 */
export function kerasGraph(modelJson: unknown, opts: KerasImportOptions = {}): KerasGraph {
  if (!isObj(modelJson)) return importFail("model.json must be a JSON object");
  if (modelJson.format !== undefined && modelJson.format !== "layers-model")
    importFail(`model.json format '${String(modelJson.format)}' is not a Layers model (layers-model)`);
  const mt = modelJson.modelTopology;
  const topo = readTopology(mt);
  const inputShape = topo.inputShape;
  if (!inputShape)
    return importFail("the model has no input shape (build it, or give its first layer input_shape)");

  // Graph names: the Keras names, except one equal to the model input's reserved name.
  const used = new Set(topo.layers.map((l) => l.name));
  const graphName = new Map<string, string>();
  for (const l of topo.layers) {
    let n = l.name;
    if (n === INPUT_NODE) {
      let k = 1;
      while (used.has(`${INPUT_NODE}_${k}`)) k++;
      n = `${INPUT_NODE}_${k}`;
      used.add(n);
    }
    graphName.set(l.name, n);
  }
  const ref = (from: string, keras: string): string => {
    if (keras === topo.inputName) return INPUT_NODE;
    const n = graphName.get(keras);
    if (n === undefined) importFail(`layer '${from}' reads '${keras}', which is not a layer of the model`);
    return n;
  };

  // Functional layers in dependency order, ending with the output (Keras lists them so; a hand-written file may
  // not). A layer that does not lead to the output is refused: it would hold weights nothing trains.
  let ordered: RawLayer[];
  if (topo.output !== null) {
    ordered = [];
    const byName = new Map(topo.layers.map((l) => [l.name, l]));
    const state = new Map<string, 1 | 2>();
    const visit = (l: RawLayer): void => {
      const st = state.get(l.name);
      if (st === 2) return;
      if (st === 1) importFail(`layer '${l.name}' is part of a cycle`);
      state.set(l.name, 1);
      for (const src of l.inbound ?? []) {
        const d = byName.get(src);
        if (d) visit(d);
        else ref(l.name, src);
      }
      state.set(l.name, 2);
      ordered.push(l);
    };
    if (topo.output === topo.inputName) importFail("the model's output is its input");
    const outLayer = byName.get(topo.output);
    if (!outLayer) importFail(`output layer '${topo.output}' is not a layer of the model`);
    visit(outLayer);
    const dangling = topo.layers.find((l) => !state.has(l.name));
    if (dangling) importFail(`layer '${dangling.name}' does not lead to the model's output '${topo.output}'`);
  } else {
    ordered = topo.layers;
  }

  const layers: LayerSpec[] = [];
  const kerasNames = new Map<string, string>();
  const axes: { name: string; cls: string; axis: number }[] = [];
  for (const l of ordered) {
    const name = graphName.get(l.name)!;
    const p = mapLayer(l.cls, name, l.config);
    const inputs = l.inbound?.map((src) => ref(l.name, src));
    const merge = p.spec.type === "Add" || p.spec.type === "Concatenate";
    if (!inputs && merge)
      importFail(`layer '${l.name}' (${l.cls}) needs 2+ inputs: not in a Sequential model`);
    layers.push(inputs ? { ...p.spec, inputs } : p.spec);
    kerasNames.set(name, l.name);
    if (p.axis !== undefined && p.axis !== -1) axes.push({ name, cls: l.cls, axis: p.axis });
  }

  const outName = layers[layers.length - 1].name;
  const outLayer = layers[layers.length - 1];
  const outAct = "activation" in outLayer ? (outLayer.activation ?? "linear") : "linear";
  const root = isObj(mt) && isObj(mt.model_config) ? mt.model_config : undefined;
  const tc = configLoss(
    modelJson.trainingConfig ??
      (isObj(mt) ? mt.training_config : undefined) ??
      (root ? root.compile_config : undefined),
  );
  let loss: LossName;
  let fromLogits = false;
  if (opts.loss) loss = opts.loss;
  else if (tc) ({ loss, fromLogits } = tc);
  else
    loss =
      outAct === "softmax"
        ? "sparse_categorical_crossentropy"
        : outAct === "sigmoid"
          ? "binary_crossentropy"
          : "mse";
  if (loss !== "mse") {
    // A linear output is the logits of a cross-entropy compiled from_logits (the graph computes the loss from
    // them); otherwise the output must be the loss's link.
    const want: ActivationName = loss === "binary_crossentropy" ? "sigmoid" : "softmax";
    if (outAct !== want && !(outAct === "linear" && (fromLogits || opts.loss !== undefined)))
      fail(
        "E_MODEL_LOSS",
        `loss ${loss} needs a ${want} output (or a linear one compiled from_logits), the output layer '${outName}' has ${outAct}`,
      );
  }
  const inputDtype: "float32" | "int32" =
    layers[0].type === "Embedding" || (topo.inputDtype !== null && /^u?int/.test(topo.inputDtype))
      ? "int32"
      : "float32";
  const draft: GraphSpec = {
    kind: "graph",
    ...(topo.name ? { name: topo.name } : {}),
    inputShape,
    ...(inputDtype === "int32" ? { inputDtype } : {}),
    layers,
    loss,
    task: "regression",
    numClasses: 1,
    ...(opts.bnPolicy ? { bnPolicy: opts.bnPolicy } : {}),
  };
  const info = probeShapes(draft);
  for (const a of axes) {
    // Keras counts the batch axis: the last axis of a per-sample shape of rank r is r.
    const rank = info.layers.find((x) => x.layer.name === a.name)!.inShapes[0].length;
    if (a.axis !== rank)
      fail(
        "E_MODEL_LAYER",
        `layer '${a.name}' (${a.cls}): axis ${a.axis} is not supported (the last axis only)`,
      );
  }
  const outShape = info.layers.find((x) => x.layer.name === outName)!.outShape;
  const outSize = outShape.reduce((x, y) => x * y, 1);
  const inSize = inputShape.reduce((x, y) => x * y, 1);
  let task: Task;
  let numClasses: number;
  if (loss === "binary_crossentropy") {
    if (outSize !== 1)
      fail(
        "E_MODEL_LOSS",
        `binary_crossentropy needs one sigmoid output, '${outName}' has ${outSize} (multi-label is not supported)`,
      );
    task = "binary";
    numClasses = 2;
  } else if (loss === "mse") {
    task = opts.task ?? (outSize === inSize ? "reconstruction" : "regression");
    numClasses = outSize;
  } else {
    if (outShape.length !== 1)
      fail("E_MODEL_LOSS", `${loss} needs a [classes] output, '${outName}' gives [${outShape.join(", ")}]`);
    task = "classification";
    numClasses = outShape[0];
  }
  if (opts.task !== undefined && opts.task !== task)
    fail("E_MODEL_LOSS", `task ${opts.task} does not fit the loss ${loss}`);
  const spec = validateGraph({ ...draft, task, numClasses });
  return { spec, manifest: manifestOf(modelJson), kerasNames, style: topo.style };
}

// ── weights ──────────────────────────────────────────────────────────────────────────────────────────────

const ENDIAN_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function float32s(bytes: Uint8Array, offset: number, n: number): Float32Array {
  const out = new Float32Array(n);
  if (ENDIAN_LE) {
    new Uint8Array(out.buffer).set(bytes.subarray(offset, offset + 4 * n));
  } else {
    const v = new DataView(bytes.buffer, bytes.byteOffset + offset, 4 * n);
    for (let i = 0; i < n; i++) out[i] = v.getFloat32(4 * i, true);
  }
  return out;
}

const DTYPE_BYTES: Readonly<Record<string, number>> = {
  float32: 4,
  int32: 4,
  float16: 2,
  uint16: 2,
  uint8: 1,
  bool: 1,
};

/** Bytes a manifest entry takes in its group's buffer (quantized entries: their quantized dtype). */
function entryBytes(w: KerasWeightEntry): number {
  const q = w.quantization as { dtype?: string } | undefined | null;
  const dtype = q && typeof q.dtype === "string" ? q.dtype : w.dtype;
  const b = DTYPE_BYTES[dtype];
  if (b === undefined) importFail(`weight '${w.name}' has dtype ${String(dtype)}, whose size is not known`);
  return b * w.shape.reduce((a, c) => a * c, 1);
}

/** Reads a shard by its path relative to model.json; undefined when it does not exist. */
export type ShardReader = (path: string) => Uint8Array | undefined;

/** Every weight of the manifest by its (`:0`-stripped) name, as float32 values. */
function readWeights(
  manifest: readonly KerasManifestGroup[],
  read: ShardReader,
): Map<string, { shape: readonly number[]; values: Float32Array }> {
  const out = new Map<string, { shape: readonly number[]; values: Float32Array }>();
  manifest.forEach((g, gi) => {
    const parts: Uint8Array[] = [];
    for (const p of g.paths) {
      if (typeof p !== "string") importFail(`weightsManifest[${gi}]: a path is not a string`);
      const b = read(p);
      if (!b) fail("E_MODEL_WEIGHTS", `weight shard '${p}' is missing`);
      parts.push(b);
    }
    const total = parts.reduce((a, b) => a + b.byteLength, 0);
    const buf = new Uint8Array(total);
    let o = 0;
    for (const b of parts) {
      buf.set(b, o);
      o += b.byteLength;
    }
    let off = 0;
    for (const w of g.weights) {
      if (w.group === "optimizer" || /^optimizer/i.test(w.name)) {
        // The optimizer's state (tfjs includeOptimizer, Keras optimizer_weights): skipped, each round starts fresh.
        off += entryBytes(w);
        continue;
      }
      if (w.quantization !== undefined && w.quantization !== null)
        fail(
          "E_MODEL_WEIGHTS",
          `weight '${w.name}' is quantized: convert the model without quantization (float32 weights only)`,
        );
      if (w.dtype !== "float32")
        fail("E_MODEL_WEIGHTS", `weight '${w.name}' has dtype ${String(w.dtype)} (float32 weights only)`);
      if (w.shape.some((d) => !Number.isInteger(d) || d < 0))
        importFail(`weight '${w.name}' has shape [${w.shape.join(", ")}]`);
      const n = w.shape.reduce((a, b) => a * b, 1);
      if (off + 4 * n > total)
        fail(
          "E_MODEL_WEIGHTS",
          `weight shards of group ${gi} hold ${total} bytes, the manifest needs more (at '${w.name}')`,
        );
      const name = w.name.replace(/:\d+$/, "");
      if (out.has(name)) importFail(`weight '${name}' appears twice in the manifest`);
      out.set(name, { shape: w.shape, values: float32s(buf, off, n) });
      off += 4 * n;
    }
    if (off !== total)
      fail(
        "E_MODEL_WEIGHTS",
        `weight shards of group ${gi} hold ${total} bytes, the manifest describes ${off}`,
      );
  });
  return out;
}

/** Keras weight names: `layer/w`, `model/layer/w`, `layer/cell/w` (RNN cells); the layer's segment then the weight. */
function findWeight(names: readonly string[], layer: string, weight: string): string | undefined {
  const exact = `${layer}/${weight}`;
  if (names.includes(exact)) return exact;
  const hits = names.filter((n) => {
    const seg = n.split("/");
    return seg[seg.length - 1] === weight && seg.slice(0, -1).includes(layer);
  });
  if (hits.length > 1) importFail(`weight ${exact} is ambiguous: ${hits.join(", ")}`);
  return hits[0];
}

/**
 * A Keras / tfjs Layers model: model.json (parsed) and its shards → the graph and its weights in the graph's
 * layout. Every layout tensor must be in the manifest with the same shape; a manifest weight of a graph layer that
 * no layout tensor takes is refused (the graph would drop it). Optimizer weights are ignored.
 */
export function importKeras(
  modelJson: unknown,
  read: ShardReader,
  opts: KerasImportOptions = {},
): ImportedModel {
  const g = kerasGraph(modelJson, opts);
  if (g.manifest.length === 0)
    importFail("model.json has no weightsManifest (save the model with its weights)");
  const all = readWeights(g.manifest, read);
  const names = [...all.keys()];
  const layout = modelLayout(g.spec);
  const weights = new Float32Array(layout.totalSize);
  const taken = new Set<string>();
  for (const e of layout.entries) {
    const slash = e.name.lastIndexOf("/");
    const layer = e.name.slice(0, slash);
    const keras = g.kerasNames.get(layer) ?? layer;
    const wname = e.name.slice(slash + 1);
    const found = findWeight(names, keras, wname);
    if (found === undefined)
      fail("E_MODEL_WEIGHTS", `weight ${keras}/${wname} is not in the weights manifest`);
    const w = all.get(found)!;
    if (w.shape.length !== e.shape.length || w.shape.some((d, i) => d !== e.shape[i]))
      fail(
        "E_MODEL_WEIGHTS",
        `weight ${found} has shape [${w.shape.join(", ")}], the layer needs [${e.shape.join(", ")}]`,
      );
    weights.set(w.values, e.offset);
    taken.add(found);
  }
  const layerNames = new Set(g.spec.layers.map((l) => g.kerasNames.get(l.name) ?? l.name));
  for (const n of names) {
    if (taken.has(n) || /(^|\/)optimizer/i.test(n)) continue;
    const seg = n.split("/");
    if (seg.slice(0, -1).some((s) => layerNames.has(s)))
      fail(
        "E_MODEL_WEIGHTS",
        `weight ${n} has no place in the graph (an option of its layer is not supported)`,
      );
  }
  return { spec: g.spec, weights };
}

// ── graph → model.json ───────────────────────────────────────────────────────────────────────────────────

const SNAKE: Readonly<Record<string, string>> = {
  kernelSize: "kernel_size",
  poolSize: "pool_size",
  dilationRate: "dilation_rate",
  depthMultiplier: "depth_multiplier",
  useBias: "use_bias",
  targetShape: "target_shape",
  recurrentActivation: "recurrent_activation",
  returnSequences: "return_sequences",
  unitForgetBias: "unit_forget_bias",
  resetAfter: "reset_after",
  inputDim: "input_dim",
  outputDim: "output_dim",
};

const KERAS_LOSS: Readonly<Record<LossName, string>> = {
  categorical_crossentropy: "categorical_crossentropy",
  sparse_categorical_crossentropy: "sparse_categorical_crossentropy",
  binary_crossentropy: "binary_crossentropy",
  mse: "mean_squared_error",
};

/** The weight shard `kerasModelJson` names: the graph's weights, float32 little-endian, in layout order. */
export const KERAS_WEIGHTS_FILE = "weights.bin";

/**
 * The tfjs Layers model.json of a graph (a Keras-2-style functional config, what tfjs `model.save()` writes) whose
 * one weight shard `weights.bin` is the graph's weights in layout order (the same bytes as a model directory's
 * weights.bin). tf.loadLayersModel loads it; `tensorflowjs_converter --input_format tfjs_layers_model
 * --output_format keras` converts it back to Keras. (tfjs-layers cannot build a GRU with reset_after: true;
 * Keras can.)
 */
export function kerasModelJson(spec: GraphSpec): Json {
  const layout = modelLayout(spec);
  const layers: Json[] = [
    {
      name: INPUT_NODE,
      class_name: "InputLayer",
      config: {
        batch_input_shape: [null, ...spec.inputShape],
        dtype: spec.inputDtype ?? "float32",
        sparse: false,
        name: INPUT_NODE,
      },
      inbound_nodes: [],
    },
  ];
  spec.layers.forEach((l, i) => {
    const config: Json = { name: l.name, trainable: true, dtype: "float32" };
    for (const [k, v] of Object.entries(l)) {
      if (k === "name" || k === "type" || k === "inputs") continue;
      config[SNAKE[k] ?? k] = v;
    }
    if (l.type === "Conv1D") {
      // tfjs and Keras keep 1-D sizes as one-element lists.
      for (const k of ["kernel_size", "strides", "dilation_rate"])
        if (typeof config[k] === "number") config[k] = [config[k]];
    }
    if (l.type === "MaxPooling1D" || l.type === "AveragePooling1D") {
      for (const k of ["pool_size", "strides"]) if (typeof config[k] === "number") config[k] = [config[k]];
    }
    if (l.type === "GRU" && config.reset_after === undefined) config.reset_after = false;
    const inputs = l.inputs ?? [i === 0 ? INPUT_NODE : spec.layers[i - 1].name];
    layers.push({
      name: l.name,
      class_name: l.type,
      config,
      inbound_nodes: [inputs.map((s) => [s, 0, 0, {}])],
    });
  });
  const output = spec.output ?? spec.layers[spec.layers.length - 1].name;
  return {
    format: "layers-model",
    generatedBy: "flotilla",
    convertedBy: null,
    modelTopology: {
      class_name: "Model",
      config: {
        name: spec.name ?? "flotilla_model",
        layers,
        input_layers: [[INPUT_NODE, 0, 0]],
        output_layers: [[output, 0, 0]],
      },
      keras_version: "tfjs-layers 4.22.0",
      backend: "tensor_flow.js",
    },
    trainingConfig: {
      loss: KERAS_LOSS[spec.loss],
      metrics: spec.task === "classification" || spec.task === "binary" ? ["accuracy"] : ["mae"],
      optimizer_config: { class_name: "SGD", config: { learning_rate: 0.01 } },
    },
    weightsManifest: [
      {
        paths: [KERAS_WEIGHTS_FILE],
        weights: layout.entries.map((e) => ({ name: e.name, shape: [...e.shape], dtype: "float32" })),
      },
    ],
  };
}

/** The weights as the shard `kerasModelJson` names (float32 little-endian, layout order). */
export function kerasWeightsBin(weights: Float32Array): Uint8Array {
  if (ENDIAN_LE) return new Uint8Array(weights.buffer, weights.byteOffset, weights.byteLength);
  const out = new Uint8Array(weights.byteLength);
  const v = new DataView(out.buffer);
  weights.forEach((x, i) => v.setFloat32(4 * i, x, true));
  return out;
}

// ── files ────────────────────────────────────────────────────────────────────────────────────────────────

/** model.json itself, or the model.json inside a directory. */
export function kerasModelFile(p: string): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    return importFail(`${p}: no such file or directory`);
  }
  return st.isDirectory() ? path.join(p, "model.json") : p;
}

function readModelJson(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    return importFail(`${file}: cannot read`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return importFail(`${file}: not valid JSON`);
  }
}

/** Reads model.json (a file or a directory holding it) and its shards (paths relative to model.json). */
export function readKerasModel(p: string, opts: KerasImportOptions = {}): ImportedModel {
  const file = kerasModelFile(p);
  const dir = path.dirname(file);
  return importKeras(
    readModelJson(file),
    (rel) => {
      const f = path.resolve(dir, rel);
      if (!f.startsWith(path.resolve(dir) + path.sep))
        return importFail(`weight shard path '${rel}' leaves the model's directory`);
      try {
        return fs.readFileSync(f);
      } catch {
        return undefined;
      }
    },
    opts,
  );
}

/** The graph of model.json (a file or a directory holding it) without reading its shards. */
export function readKerasGraph(p: string, opts: KerasImportOptions = {}): GraphSpec {
  return kerasGraph(readModelJson(kerasModelFile(p)), opts).spec;
}

/** Writes `dir`/model.json and `dir`/weights.bin (tfjs-loadable) for a graph and its weights. */
export function writeKerasModel(dir: string, spec: GraphSpec, weights: Float32Array): void {
  const layout = modelLayout(spec);
  if (weights.length !== layout.totalSize)
    fail("E_MODEL_LAYOUT", `weights have ${weights.length} values, the graph needs ${layout.totalSize}`);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "model.json"), JSON.stringify(kerasModelJson(spec)) + "\n");
  fs.writeFileSync(path.join(dir, KERAS_WEIGHTS_FILE), kerasWeightsBin(weights));
}
