/**
 * Architecture plans of the four model kinds of `model-spec.ts`: the layers, the weight layout and the initial
 * weights. Pure JS, no tfjs: the Function computes layouts and initial models from here without loading TensorFlow.js
 * or its wasm backend (test/cloud/aggregator/no-tfjs.test.ts checks it). The network that trains a plan is
 * `network.ts`, the model around it `models.ts`.
 *
 * Weights are exchanged as one flat Float32Array in the layout of `modelLayout(spec)`: one entry per tensor,
 * Keras-style shapes (dense kernel [in, out], conv kernel [kh, kw, in, out], conv1d kernel [k, in, out], biases
 * [out]), in a fixed order. Initialization is Glorot uniform kernels and zero biases from our own seeded
 * generator (`Rng`), so any two processes with the same spec and seed start from bit-identical weights.
 * Glorot uniform: Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural networks".
 *
 * Architectures:
 * - mlp:         dense+relu for each hidden width, dense to numClasses, softmax (2NN of McMahan et al. 2017).
 * - cnn:         per filters entry: conv k×k 'same' + relu + 2×2 max-pool; flatten; dense `dense` + relu; dense to
 *                numClasses (McMahan et al. 2017 CNN: 1,663,370 parameters for [28, 28, 1]).
 * - cnn1d:       per filters entry: conv1d k 'same' + relu, 2-max-pool after all but the last; global average pool
 *                over time; dense to numClasses (11,621 parameters for [64, 6], 5 classes, default spec).
 * - autoencoder: dense+relu for each encoder width, then the mirrored decoder, linear output of the input size;
 *                loss = mean squared reconstruction error.
 */
import { fail } from "../errors";
import { Rng } from "../data/rng";
import { makeLayout } from "../tensor/layout";
import type { WeightLayout } from "../tensor/layout";
import { graphInitialWeights, graphTensors } from "./graph";
import type { ModelSpec, PresetSpec } from "./model-spec";

export interface ConvPlan {
  readonly name: string;
  /** Input height/width/channels (height 1 for conv1d). */
  readonly h: number;
  readonly w: number;
  readonly cin: number;
  readonly cout: number;
  readonly kh: number;
  readonly kw: number;
  /** Max-pool window = stride, [1, 1] when the layer has no pooling. */
  readonly ph: number;
  readonly pw: number;
}

export interface DensePlan {
  readonly name: string;
  readonly nin: number;
  readonly nout: number;
  readonly relu: boolean;
}

export interface Plan {
  readonly kind: PresetSpec["kind"];
  /** Flat input size per sample. */
  readonly inputSize: number;
  /** NHWC shape of one sample for conv nets ([1, T, C] for cnn1d). */
  readonly image: readonly [number, number, number] | null;
  readonly convs: readonly ConvPlan[];
  /** How the last conv output becomes the dense input. */
  readonly head: "flatten" | "gap" | null;
  readonly dense: readonly DensePlan[];
  /** "classifier": softmax cross-entropy on labels; "reconstruction": MSE against the input. */
  readonly task: "classifier" | "reconstruction";
  readonly numClasses: number;
  /** Keras-style external shape of each layout entry, in layout order, with the initializer's fans. */
  readonly tensors: readonly TensorPlan[];
}

export interface TensorPlan {
  readonly name: string;
  /** Keras-style shape, as in the layout. */
  readonly shape: number[];
  /** Shape of the tensor the network holds: dense kernels transposed [out, in], dense biases [out, 1] (the
   *  activations are feature-major), conv1d kernels [1, k, in, out]; the others as `shape`. */
  readonly internal: number[];
  /** Dense kernels are stored transposed. */
  readonly transposed: boolean;
  /** Glorot fans for kernels, null for biases (zeros). */
  readonly fans: readonly [number, number] | null;
}

function positiveInts(v: readonly number[] | undefined, what: string): number[] {
  const a = v ?? [];
  if (!Array.isArray(a) || a.some((d) => !Number.isInteger(d) || d <= 0)) {
    fail("E_MODEL_SPEC", `model spec ${what} must be positive integers, got ${JSON.stringify(v)}`);
  }
  return [...a];
}

/** The plan of a preset (layer graphs have none: see graph.ts). */
export function planFor(spec: PresetSpec): Plan {
  const inputShape = positiveInts(spec.inputShape, "inputShape");
  if (inputShape.length === 0) fail("E_MODEL_SPEC", "model spec inputShape is empty");
  const inputSize = inputShape.reduce((a, b) => a * b, 1);
  const numClasses = spec.numClasses;
  if (!Number.isInteger(numClasses) || numClasses < 1) {
    fail("E_MODEL_SPEC", "model spec numClasses must be a positive integer");
  }
  const tensors: TensorPlan[] = [];
  const dense: DensePlan[] = [];
  const addDense = (name: string, nin: number, nout: number, relu: boolean) => {
    dense.push({ name, nin, nout, relu });
    tensors.push({
      name: `${name}/kernel`,
      shape: [nin, nout],
      internal: [nout, nin],
      transposed: true,
      fans: [nin, nout],
    });
    tensors.push({ name: `${name}/bias`, shape: [nout], internal: [nout, 1], transposed: false, fans: null });
  };
  switch (spec.kind) {
    case "mlp": {
      const hidden = positiveInts(spec.hidden ?? [200, 200], "hidden");
      let n = inputSize;
      hidden.forEach((hw, i) => {
        addDense(`dense_${i}`, n, hw, true);
        n = hw;
      });
      addDense(`dense_${hidden.length}`, n, numClasses, false);
      return {
        kind: spec.kind,
        inputSize,
        image: null,
        convs: [],
        head: null,
        dense,
        task: "classifier",
        numClasses,
        tensors,
      };
    }
    case "autoencoder": {
      const hidden = positiveInts(spec.hidden ?? [64, 16], "hidden");
      if (hidden.length === 0) fail("E_MODEL_SPEC", "autoencoder needs at least one encoder width");
      let n = inputSize;
      hidden.forEach((hw, i) => {
        addDense(`encoder_${i}`, n, hw, true);
        n = hw;
      });
      const widths = [...hidden.slice(0, -1).reverse(), inputSize];
      widths.forEach((hw, i) => {
        addDense(`decoder_${i}`, n, hw, i < widths.length - 1);
        n = hw;
      });
      return {
        kind: spec.kind,
        inputSize,
        image: null,
        convs: [],
        head: null,
        dense,
        task: "reconstruction",
        numClasses,
        tensors,
      };
    }
    case "cnn":
    case "cnn1d": {
      const oneD = spec.kind === "cnn1d";
      if (oneD && inputShape.length !== 2) {
        fail("E_MODEL_SHAPE", `model cnn1d needs [time, channels] inputs, got [${inputShape}]`);
      }
      if (!oneD && inputShape.length !== 3) {
        fail("E_MODEL_SHAPE", `model cnn needs [height, width, channels] inputs, got [${inputShape}]`);
      }
      const filters = positiveInts(spec.filters ?? [32, 64], "filters");
      if (filters.length === 0) fail("E_MODEL_SPEC", `model ${spec.kind} needs at least one conv layer`);
      const k = spec.kernelSize ?? 5;
      if (!Number.isInteger(k) || k <= 0)
        fail("E_MODEL_SPEC", "model spec kernelSize must be a positive integer");
      let [h, w, c] = oneD
        ? [1, inputShape[0], inputShape[1]]
        : [inputShape[0], inputShape[1], inputShape[2]];
      const image: [number, number, number] = [h, w, c];
      const convs: ConvPlan[] = [];
      filters.forEach((f, i) => {
        const pool = oneD ? i < filters.length - 1 : true;
        const ph = pool && !oneD ? 2 : 1;
        const pw = pool ? 2 : 1;
        const name = oneD ? `conv1d_${i}` : `conv_${i}`;
        const kh = oneD ? 1 : k;
        if (Math.floor(h / ph) < 1 || Math.floor(w / pw) < 1) {
          fail(
            "E_MODEL_SHAPE",
            `model ${spec.kind}: input [${inputShape}] is too small for ${filters.length} pooled layers`,
          );
        }
        convs.push({ name, h, w, cin: c, cout: f, kh, kw: k, ph, pw });
        tensors.push({
          name: `${name}/kernel`,
          shape: oneD ? [k, c, f] : [k, k, c, f],
          internal: [kh, k, c, f],
          transposed: false,
          fans: [kh * k * c, kh * k * f],
        });
        tensors.push({ name: `${name}/bias`, shape: [f], internal: [f], transposed: false, fans: null });
        h = Math.floor(h / ph);
        w = Math.floor(w / pw);
        c = f;
      });
      if (oneD) {
        addDense("dense_0", c, numClasses, false);
        return {
          kind: spec.kind,
          inputSize,
          image,
          convs,
          head: "gap",
          dense,
          task: "classifier",
          numClasses,
          tensors,
        };
      }
      const width = spec.dense ?? 512;
      if (!Number.isInteger(width) || width <= 0)
        fail("E_MODEL_SPEC", "model spec dense must be a positive integer");
      addDense("dense_0", h * w * c, width, true);
      addDense("dense_1", width, numClasses, false);
      return {
        kind: spec.kind,
        inputSize,
        image,
        convs,
        head: "flatten",
        dense,
        task: "classifier",
        numClasses,
        tensors,
      };
    }
    default:
      return fail("E_MODEL_SPEC", `unknown model kind '${String((spec as { kind: unknown }).kind)}'`);
  }
}

/** The weight layout of a spec (names, Keras-style shapes, offsets, hash), preset or graph. Needs no tfjs backend. */
export function modelLayout(spec: ModelSpec): WeightLayout {
  return makeLayout(spec.kind === "graph" ? graphTensors(spec) : planFor(spec).tensors);
}

/** Number of trainable parameters of a spec. */
export function countParams(spec: ModelSpec): number {
  return modelLayout(spec).totalSize;
}

/**
 * The initial weights for (spec, seed) in layout order (a layer graph: graph.ts's initializers): Glorot uniform kernels (limit sqrt(6 / (fanIn + fanOut)),
 * Keras's fans for convolutions: kernel area × channels), zero biases. Pure JS, bit-identical everywhere.
 */
export function initialWeights(spec: ModelSpec, seed: number): Float32Array {
  // A graph's initializers per tensor (graph.ts); a preset's graph draws the same numbers in the same order.
  if (spec.kind === "graph") return graphInitialWeights(graphTensors(spec), seed);
  const plan = planFor(spec);
  const layout = makeLayout(plan.tensors);
  const out = new Float32Array(layout.totalSize);
  const rng = new Rng(seed);
  plan.tensors.forEach((t, i) => {
    if (t.fans === null) return;
    const limit = Math.sqrt(6 / (t.fans[0] + t.fans[1]));
    const { offset, size } = layout.entries[i];
    for (let j = 0; j < size; j++) out[offset + j] = (2 * rng.next() - 1) * limit;
  });
  return out;
}
