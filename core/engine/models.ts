/**
 * The four model kinds of `model-spec.ts` on the TensorFlow.js wasm backend, trained by a hand-written SGD step.
 *
 * Why not `model.fit` / autodiff: at the batch sizes federated devices use (B = 10 in McMahan et al. 2017) a
 * training step is dominated by per-op overhead and by XNNPACK re-packing weight matrices, not by arithmetic. So
 * each step here is one straight sequence of tfjs kernels with an analytically derived backward pass:
 *
 * - Dense layers run "feature-major": activations are [features, batch] and the kernel is stored transposed
 *   ([out, in]), so every matmul has the weight matrix as its left operand. The wasm BatchMatMul hands its right
 *   operand to XNNPACK, which re-packs it on every call whose right operand is a new tensor; weights are new every
 *   step, activations are small. (Batch-major x·W re-packs W each step: ~1.2 ms for 784×200 vs ~0.3 ms for the
 *   whole feature-major product, measured.) Transposed-operand matmuls are avoided: wasm runs them as a naive loop.
 * - The learning rate is folded into the output gradient (dL/dlogits · lr), so every gradient comes out already
 *   scaled and each SGD update is one Sub kernel per tensor.
 * - Batches are written from the JS dataset straight into wasm memory in the layouts the step needs (no gather,
 *   which is slow on wasm), and the loss is never read back during training: the last epoch's logits are kept
 *   on-device and reduced once at the end.
 * - Convolutions (NHWC, 'same', stride 1, relu, max-pool) use XNNPACK's forward conv for all three products:
 *   the filter gradient as a convolution of the transposed input with the transposed output gradient, the input
 *   gradient as a convolution with the flipped filter. The max-pool + relu backward (and the conv bias gradient)
 *   is one JS pass over wasm memory, ~6× faster than the wasm MaxPoolGrad kernel.
 *
 * Weights are exchanged as one flat Float32Array in the layout of `modelLayout(spec)`: one entry per tensor,
 * Keras-style shapes (dense kernel [in, out], conv kernel [kh, kw, in, out], conv1d kernel [k, in, out], biases
 * [out]), in a fixed order. Initialization is Glorot uniform kernels and zero biases from our own seeded
 * generator (`Rng`), so any two processes with the same spec and seed start from bit-identical weights.
 *
 * Architectures:
 * - mlp:         dense+relu for each hidden width, dense to numClasses, softmax (2NN of McMahan et al. 2017).
 * - cnn:         per filters entry: conv k×k 'same' + relu + 2×2 max-pool; flatten; dense `dense` + relu; dense to
 *                numClasses (McMahan et al. 2017 CNN: 1,663,370 parameters for [28, 28, 1]).
 * - cnn1d:       per filters entry: conv1d k 'same' + relu, 2-max-pool after all but the last; global average pool
 *                over time; dense to numClasses (11,621 parameters for [64, 6], 5 classes, default spec).
 * - autoencoder: dense+relu for each encoder width, then the mirrored decoder, linear output of the input size;
 *                loss = mean squared reconstruction error.
 *
 * Autoencoder evaluation: the loss is the mean squared reconstruction error; the accuracy is anomaly-detection
 * accuracy with label 0 = normal and any other label = anomaly: a sample is flagged as an anomaly when its
 * reconstruction error (mean over features) exceeds the 95th percentile (linear interpolation) of the errors of
 * the label-0 samples of the evaluated data. Accuracy is NaN when the data has no label-0 sample.
 */
import * as tf from "@tensorflow/tfjs";
import { FlotillaError, fail } from "../errors";
import type { Dataset } from "../data/dataset";
import { Rng } from "../data/rng";
import { makeLayout } from "../tensor/layout";
import type { WeightLayout } from "../tensor/layout";
import { initBackend, wasmBackend } from "./backend";
import type { ModelSpec } from "./model-spec";
import type { EvalSummary, LocalModel, TrainOptions, TrainSummary } from "./types";

// ---------------------------------------------------------------------------------------------------------------
// Architecture plans (pure JS: the layout and the initial weights need no tfjs)
// ---------------------------------------------------------------------------------------------------------------

interface ConvPlan {
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

interface DensePlan {
  readonly name: string;
  readonly nin: number;
  readonly nout: number;
  readonly relu: boolean;
}

interface Plan {
  readonly kind: ModelSpec["kind"];
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

interface TensorPlan {
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

function planFor(spec: ModelSpec): Plan {
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

/** The weight layout of a spec (names, Keras-style shapes, offsets, hash). Needs no tfjs backend. */
export function modelLayout(spec: ModelSpec): WeightLayout {
  return makeLayout(planFor(spec).tensors);
}

/** Number of trainable parameters of a spec. */
export function countParams(spec: ModelSpec): number {
  return modelLayout(spec).totalSize;
}

/**
 * The initial weights for (spec, seed) in layout order: Glorot uniform kernels (limit sqrt(6 / (fanIn + fanOut)),
 * Keras's fans for convolutions: kernel area × channels), zero biases. Pure JS, bit-identical everywhere.
 */
export function initialWeights(spec: ModelSpec, seed: number): Float32Array {
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

// ---------------------------------------------------------------------------------------------------------------
// Small tfjs helpers
// ---------------------------------------------------------------------------------------------------------------

/** A float32 tensor whose values `write` stores directly into its (fresh, uninitialized) wasm memory. */
function heapTensor<R extends tf.Rank>(shape: number[], write: (view: Float32Array) => void): tf.Tensor<R> {
  const be = wasmBackend();
  const info = be.makeOutput(shape, "float32");
  write(be.typedArrayFromHeap(info) as Float32Array);
  return tf.engine().makeTensorFromTensorInfo(info) as tf.Tensor<R>;
}

/** A read-only view of a float32 tensor's wasm memory (valid until the next wasm allocation). */
function heapView(t: tf.Tensor): Float32Array {
  return wasmBackend().typedArrayFromHeap(t) as Float32Array;
}

/**
 * 2-D transpose. The wasm Transpose kernel is slow on large 2-D inputs (8.6 ms for 512×3136) but fast on 3-D ones
 * (1.6 ms), so [R, C] is viewed as [R, C/f, f] and permuted to [C/f, f, R], which is the same [C, R] data.
 */
function transpose2d(x: tf.Tensor2D): tf.Tensor2D {
  const [r, c] = x.shape;
  if (r * c < 16384) return tf.transpose(x);
  let f = 0;
  for (const cand of [16, 32, 8, 64, 24, 48, 12, 20, 28, 40, 56, 10, 14, 7, 6, 5, 4, 3, 2]) {
    if (c % cand === 0 && c / cand > 1) {
      f = cand;
      break;
    }
  }
  if (f === 0) return tf.transpose(x);
  return tf.reshape(tf.transpose(tf.reshape(x, [r, c / f, f]), [1, 2, 0]), [c, r]);
}

// ---------------------------------------------------------------------------------------------------------------
// The network
// ---------------------------------------------------------------------------------------------------------------

/** One mini-batch in the layouts a step needs. */
interface Batch {
  readonly n: number;
  /** Dense nets: the input feature-major [D, n]. */
  readonly xT: tf.Tensor2D | null;
  /** Conv nets: NHWC [n, H, W, C]; dense nets, training only: [n, D] (for the first weight gradient). */
  readonly x: tf.Tensor | null;
  /** Conv nets, training only: the input as [C, H, W, n] (for the first filter gradient). */
  readonly xC: tf.Tensor4D | null;
  /** Classifiers, training only: one-hot labels [n, classes]. */
  readonly y: tf.Tensor2D | null;
}

/** Saved forward activations of a conv layer. */
interface ConvTrace {
  readonly input: tf.Tensor4D;
  /** relu(conv(input) + bias) */
  readonly act: tf.Tensor4D;
  /** max-pooled act (=== act when the layer has no pooling) */
  readonly out: tf.Tensor4D;
}

interface ForwardTrace {
  readonly convs: ConvTrace[];
  /** Dense inputs, batch-major [n, in] (for the weight gradients; the first is null outside training). */
  readonly denseInputs: (tf.Tensor2D | null)[];
  /** Dense inputs, feature-major [in, n]. */
  readonly denseInputsT: tf.Tensor2D[];
  /** Output of the last dense layer, feature-major [out, n] (logits or reconstruction). */
  readonly outT: tf.Tensor2D;
}

class Network {
  readonly plan: Plan;
  /** The parameters in layout order, shaped as TensorPlan.internal. */
  params: tf.Tensor[] = [];

  constructor(plan: Plan) {
    this.plan = plan;
  }

  /** Replaces the parameters with `flat` (layout order, external shapes). */
  load(flat: Float32Array, layout: WeightLayout): void {
    const next = this.plan.tensors.map((t, i) => {
      const { offset, size } = layout.entries[i];
      const src = flat.subarray(offset, offset + size);
      if (t.transposed) {
        const [nin, nout] = t.shape;
        return heapTensor(t.internal, (v) => {
          for (let a = 0; a < nin; a++) {
            const row = a * nout;
            for (let b = 0; b < nout; b++) v[b * nin + a] = src[row + b];
          }
        });
      }
      return heapTensor(t.internal, (v) => v.set(src));
    });
    const old = this.params;
    this.params = next;
    tf.dispose(old);
  }

  /** The parameters as one flat array (layout order, external shapes). */
  save(layout: WeightLayout): Float32Array {
    const out = new Float32Array(layout.totalSize);
    this.plan.tensors.forEach((t, i) => {
      const { offset } = layout.entries[i];
      const v = heapView(this.params[i]);
      if (t.transposed) {
        const [nin, nout] = t.shape;
        for (let b = 0; b < nout; b++) {
          const row = b * nin;
          for (let a = 0; a < nin; a++) out[offset + a * nout + b] = v[row + a];
        }
      } else {
        out.set(v, offset);
      }
    });
    return out;
  }

  private convParams(i: number): [tf.Tensor4D, tf.Tensor1D] {
    return [this.params[2 * i] as tf.Tensor4D, this.params[2 * i + 1] as tf.Tensor1D];
  }

  private denseParams(j: number): [tf.Tensor2D, tf.Tensor2D] {
    const k = 2 * (this.plan.convs.length + j);
    return [this.params[k] as tf.Tensor2D, this.params[k + 1] as tf.Tensor2D];
  }

  /**
   * Samples idx[from .. to) of `data`, written straight into wasm memory in the layouts the net needs
   * (training also needs the ones only the backward pass reads, and the labels).
   */
  batch(data: Dataset, idx: ArrayLike<number>, from: number, to: number, training: boolean): Batch {
    const n = to - from;
    const d = this.plan.inputSize;
    const src = data.x;
    const image = this.plan.image;
    let y: tf.Tensor2D | null = null;
    if (training && this.plan.task === "classifier") {
      const c = this.plan.numClasses;
      y = heapTensor([n, c], (v) => {
        v.fill(0);
        for (let r = 0; r < n; r++) v[r * c + data.y[idx[from + r]]] = 1;
      });
    }
    let x: tf.Tensor | null = null;
    if (training || image !== null) {
      x = heapTensor([n, d], (v) => {
        for (let r = 0; r < n; r++) {
          const j = idx[from + r];
          v.set(src.subarray(j * d, (j + 1) * d), r * d);
        }
      });
    }
    if (image === null) {
      const xT = heapTensor<tf.Rank.R2>([d, n], (v) => {
        for (let r = 0; r < n; r++) {
          const j = idx[from + r] * d;
          for (let k = 0; k < d; k++) v[k * n + r] = src[j + k];
        }
      });
      return { n, x, xT, xC: null, y };
    }
    const [h, w, c] = image;
    const hw = h * w;
    const xC = !training
      ? null
      : heapTensor<tf.Rank.R4>([c, h, w, n], (v) => {
          for (let r = 0; r < n; r++) {
            const j = idx[from + r] * d;
            for (let p = 0; p < hw; p++) {
              for (let ch = 0; ch < c; ch++) v[(ch * hw + p) * n + r] = src[j + p * c + ch];
            }
          }
        });
    return { n, x: tf.reshape(x as tf.Tensor, [n, h, w, c]), xT: null, xC, y };
  }

  /** The forward pass; with `training`, also what the backward pass needs. */
  forward(b: Batch, training: boolean): ForwardTrace {
    const plan = this.plan;
    const convs: ConvTrace[] = [];
    let first: tf.Tensor2D | null;
    let firstT: tf.Tensor2D;
    if (plan.convs.length === 0) {
      first = b.x as tf.Tensor2D | null;
      firstT = b.xT as tf.Tensor2D;
    } else {
      let h = b.x as tf.Tensor4D;
      plan.convs.forEach((c, i) => {
        const [filter, bias] = this.convParams(i);
        const act = tf.fused.conv2d({ x: h, filter, bias, strides: 1, pad: "same", activation: "relu" });
        const out = c.ph * c.pw > 1 ? tf.maxPool(act, [c.ph, c.pw], [c.ph, c.pw], "valid") : act;
        convs.push({ input: h, act, out });
        h = out;
      });
      const feat: tf.Tensor2D = plan.head === "gap" ? tf.mean(h, [1, 2]) : tf.reshape(h, [b.n, h.size / b.n]);
      first = feat;
      firstT = transpose2d(feat);
    }
    const denseInputs = [first];
    const denseInputsT = [firstT];
    let aT = firstT;
    plan.dense.forEach((l, j) => {
      const [wt, bias] = this.denseParams(j);
      const z = tf.add(tf.matMul(wt, aT), bias);
      aT = (l.relu ? tf.relu(z) : z) as tf.Tensor2D;
      if (training && j < plan.dense.length - 1) {
        denseInputsT.push(aT);
        denseInputs.push(transpose2d(aT));
      }
    });
    return { convs, denseInputs, denseInputsT, outT: aT };
  }

  /**
   * Gradients of every parameter, in layout order, given the output gradient dzT [out, n] (already multiplied by
   * the learning rate).
   */
  backward(b: Batch, tr: ForwardTrace, dzOutT: tf.Tensor2D): tf.Tensor[] {
    const plan = this.plan;
    const grads: tf.Tensor[] = new Array(this.params.length);
    const nc = plan.convs.length;
    let dzT = dzOutT;
    for (let j = plan.dense.length - 1; j >= 0; j--) {
      const [wt] = this.denseParams(j);
      grads[2 * (nc + j)] = tf.matMul(dzT, tr.denseInputs[j] as tf.Tensor2D);
      grads[2 * (nc + j) + 1] = tf.sum(dzT, 1, true);
      if (j === 0 && nc === 0) break;
      const daT = tf.matMul(transpose2d(wt), dzT);
      dzT = (j > 0 ? tf.mul(daT, tf.step(tr.denseInputsT[j])) : daT) as tf.Tensor2D;
    }
    if (nc === 0) return grads;
    // dzT is now the gradient of the dense input, feature-major [features, n].
    const last = tr.convs[nc - 1].out;
    let dOut: tf.Tensor4D;
    if (plan.head === "gap") {
      const [, h, w, c] = last.shape;
      dOut = tf.mul(tf.reshape(transpose2d(dzT), [b.n, 1, 1, c]), tf.fill([b.n, h, w, c], 1 / (h * w)));
    } else {
      dOut = tf.reshape(transpose2d(dzT), last.shape);
    }
    for (let i = nc - 1; i >= 0; i--) {
      const c = plan.convs[i];
      const t = tr.convs[i];
      const [filter] = this.convParams(i);
      // dz: NHWC (for the input gradient, layers > 0), dzT: [H, W, B, C] (for the filter gradient).
      let dz: tf.Tensor4D | null;
      let dzT: tf.Tensor4D;
      if (c.ph * c.pw > 1) {
        const r = maxPoolReluBackward(t.act, t.out, dOut, c.ph, c.pw, i > 0);
        dz = r.dz;
        dzT = r.dzT;
        grads[2 * i + 1] = r.db;
      } else {
        const masked = tf.mul(dOut, tf.step(t.act)) as tf.Tensor4D;
        dz = masked;
        dzT = tf.transpose(masked, [1, 2, 0, 3]);
        grads[2 * i + 1] = tf.sum(tf.reshape(masked, [-1, c.cout]), 0);
      }
      const inputC = i === 0 ? (b.xC as tf.Tensor4D) : tf.transpose(t.input, [3, 1, 2, 0]);
      grads[2 * i] = convFilterGrad(inputC, dzT, c.kh, c.kw);
      if (i > 0) dOut = convInputGrad(dz as tf.Tensor4D, filter);
    }
    return grads;
  }

  dispose(): void {
    tf.dispose(this.params);
    this.params = [];
  }
}

/** "same" padding of a stride-1 conv: [before, after] for a kernel of size k. */
function samePad(k: number): [number, number] {
  const before = Math.floor((k - 1) / 2);
  return [before, k - 1 - before];
}

/**
 * dW of a stride-1 'same' NHWC conv from the input as x̃ [Cin, H, W, B] and dz as d̃z [H, W, B, Cout]:
 *   dW[kh,kw,ci,co] = Σ_{b,h,w} x[b, h+kh−pt, w+kw−pl, ci] · dz[b,h,w,co]
 * which is a forward convolution of the "image batch" x̃[ci, h, w, b] with the "filter" d̃z[h, w, b, co],
 * padded by (pt, pb) × (pl, pr); its output [Cin, kh, kw, Cout] is transposed to [kh, kw, Cin, Cout].
 */
function convFilterGrad(inputC: tf.Tensor4D, dzT: tf.Tensor4D, kh: number, kw: number): tf.Tensor4D {
  const [pt, pb] = samePad(kh);
  const [pl, pr] = samePad(kw);
  const g = tf.conv2d(inputC, dzT, 1, [
    [0, 0],
    [pt, pb],
    [pl, pr],
    [0, 0],
  ]);
  return tf.transpose(g, [1, 2, 0, 3]);
}

/**
 * dx of a stride-1 'same' NHWC conv: the full correlation of dz with the filter flipped in space and with its
 * channel axes swapped, Wᶠ[kh',kw',co,ci] = W[KH−1−kh', KW−1−kw', ci, co], padded by (KH−1−pt, KH−1−pb).
 * The flip is one JS pass over wasm memory (the wasm Reverse kernel takes ~4 ms for a 5×5×32×64 filter).
 */
function convInputGrad(dz: tf.Tensor4D, filter: tf.Tensor4D): tf.Tensor4D {
  const [kh, kw, ci, co] = filter.shape;
  const flipped = heapTensor<tf.Rank.R4>([kh, kw, co, ci], (v) => {
    const f = heapView(filter);
    const taps = kh * kw;
    for (let t = 0; t < taps; t++) {
      const s = (taps - 1 - t) * ci * co;
      const d = t * ci * co;
      for (let i = 0; i < ci; i++) for (let o = 0; o < co; o++) v[d + o * ci + i] = f[s + i * co + o];
    }
  });
  const [pt, pb] = samePad(kh);
  const [pl, pr] = samePad(kw);
  return tf.conv2d(dz, flipped, 1, [
    [0, 0],
    [kh - 1 - pt, kh - 1 - pb],
    [kw - 1 - pl, kw - 1 - pr],
    [0, 0],
  ]);
}

/**
 * Backward of out = maxPool(relu(z)) (window = stride = ph × pw, 'valid'), given act = relu(z), out and dOut:
 * each window routes dOut to its (first, row-major) maximum when that maximum is > 0 (where relu passes the
 * gradient), zero elsewhere. One JS pass over wasm memory (~6× faster than the wasm MaxPoolGrad kernel) that
 * writes dz in the two layouts the conv gradients take, so neither needs a Transpose kernel:
 * NHWC [B, H, W, C] (input gradient; only when `nhwc`) and [H, W, B, C] (filter gradient), and that also sums
 * the bias gradient Σ_{b,h,w} dz.
 */
function maxPoolReluBackward(
  act: tf.Tensor4D,
  out: tf.Tensor4D,
  dOut: tf.Tensor4D,
  ph: number,
  pw: number,
  nhwc: boolean,
): { dz: tf.Tensor4D | null; dzT: tf.Tensor4D; db: tf.Tensor1D } {
  const [nb, h, w, c] = act.shape;
  const [, oh, ow] = out.shape;
  const db = new Float32Array(c);
  const be = wasmBackend();
  const dzInfo = nhwc ? be.makeOutput([nb, h, w, c], "float32") : null;
  const dzTInfo = be.makeOutput([h, w, nb, c], "float32");
  // Views only after the allocations (an allocation may grow, and so detach, the wasm memory).
  const a = heapView(act);
  const p = heapView(out);
  const d = heapView(dOut);
  const g = dzInfo ? (be.typedArrayFromHeap(dzInfo) as Float32Array) : null;
  const gT = be.typedArrayFromHeap(dzTInfo) as Float32Array;
  g?.fill(0);
  gT.fill(0);
  if (ph === 2 && pw === 2) {
    maxPool2x2Backward(a, p, d, g, gT, db, nb, h, w, c, oh, ow);
  } else {
    maxPoolGenericBackward(a, p, d, g, gT, db, nb, h, w, c, oh, ow, ph, pw);
  }
  const engine = tf.engine();
  return {
    dz: dzInfo ? (engine.makeTensorFromTensorInfo(dzInfo) as tf.Tensor4D) : null,
    dzT: engine.makeTensorFromTensorInfo(dzTInfo) as tf.Tensor4D,
    db: tf.tensor1d(db),
  };
}

/** maxPoolReluBackward's loop for 2×2 windows, unrolled (the McMahan CNN's case; ~30% faster than generic). */
function maxPool2x2Backward(
  a: Float32Array,
  p: Float32Array,
  d: Float32Array,
  g: Float32Array | null,
  gT: Float32Array,
  db: Float32Array,
  nb: number,
  h: number,
  w: number,
  c: number,
  oh: number,
  ow: number,
): void {
  const rowA = w * c; // next row in act (NHWC)
  const colT = nb * c; // next column in dzT ([H, W, B, C])
  const rowT = w * colT; // next row in dzT
  for (let b = 0; b < nb; b++) {
    for (let i = 0; i < oh; i++) {
      for (let j = 0; j < ow; j++) {
        const po = ((b * oh + i) * ow + j) * c;
        const baseA = ((b * h + 2 * i) * w + 2 * j) * c;
        const baseT = 2 * i * rowT + 2 * j * colT + b * c;
        for (let ch = 0; ch < c; ch++) {
          const m = p[po + ch];
          if (!(m > 0)) continue;
          const gv = d[po + ch];
          db[ch] += gv;
          let oa = baseA + ch;
          let ot = baseT + ch;
          if (a[oa] !== m) {
            if (a[oa + c] === m) {
              oa += c;
              ot += colT;
            } else if (a[oa + rowA] === m) {
              oa += rowA;
              ot += rowT;
            } else {
              oa += rowA + c;
              ot += rowT + colT;
            }
          }
          if (g !== null) g[oa] = gv;
          gT[ot] = gv;
        }
      }
    }
  }
}

/** maxPoolReluBackward's loop for any window. */
function maxPoolGenericBackward(
  a: Float32Array,
  p: Float32Array,
  d: Float32Array,
  g: Float32Array | null,
  gT: Float32Array,
  db: Float32Array,
  nb: number,
  h: number,
  w: number,
  c: number,
  oh: number,
  ow: number,
  ph: number,
  pw: number,
): void {
  // Window cell k: offset in act (NHWC), row and column offsets.
  const cells = ph * pw;
  const offA = new Int32Array(cells);
  const du = new Int32Array(cells);
  const dv = new Int32Array(cells);
  for (let u = 0, k = 0; u < ph; u++) {
    for (let v = 0; v < pw; v++, k++) {
      offA[k] = (u * w + v) * c;
      du[k] = u;
      dv[k] = v;
    }
  }
  for (let b = 0; b < nb; b++) {
    for (let i = 0; i < oh; i++) {
      for (let j = 0; j < ow; j++) {
        const po = ((b * oh + i) * ow + j) * c;
        const base = ((b * h + i * ph) * w + j * pw) * c;
        for (let ch = 0; ch < c; ch++) {
          const m = p[po + ch];
          if (!(m > 0)) continue;
          const gv = d[po + ch];
          db[ch] += gv;
          let k = 0;
          while (k < cells - 1 && a[base + offA[k] + ch] !== m) k++;
          if (g !== null) g[base + offA[k] + ch] = gv;
          gT[(((i * ph + du[k]) * w + j * pw + dv[k]) * nb + b) * c + ch] = gv;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// LocalModel
// ---------------------------------------------------------------------------------------------------------------

/** Default evaluation batch: bounds activation memory (the CNN's first layer is 100 KB per sample). */
const EVAL_BATCH = 256;
/** Yield to the event loop (abort signals, timers, transports) at least this often during training. */
const YIELD_MS = 50;

function checkData(plan: Plan, data: Dataset, what: string): void {
  const size = data.inputShape.reduce((a, b) => a * b, 1);
  if (size !== plan.inputSize) {
    fail(
      "E_DATA_SHAPE",
      `${what}: the model takes samples of ${plan.inputSize} values, the data has [${data.inputShape}]`,
    );
  }
  if (data.x.length !== data.n * size || data.y.length !== data.n) {
    fail("E_DATA_SHAPE", `${what}: dataset arrays do not match n = ${data.n}`);
  }
  if (plan.task === "classifier") {
    for (let i = 0; i < data.n; i++) {
      const y = data.y[i];
      if (!(y >= 0 && y < plan.numClasses)) {
        fail("E_DATA_LABEL", `${what}: label ${y} of sample ${i} is outside 0..${plan.numClasses - 1}`);
      }
    }
  }
}

function checkTrainOptions(o: TrainOptions): void {
  if (!Number.isInteger(o.epochs) || o.epochs < 0)
    fail("E_CONFIG_TRAIN", `epochs must be an integer >= 0, got ${o.epochs}`);
  if (!Number.isInteger(o.batchSize) || o.batchSize < 1) {
    fail("E_CONFIG_TRAIN", `batchSize must be a positive integer, got ${o.batchSize}`);
  }
  if (!Number.isFinite(o.lr) || o.lr < 0)
    fail("E_CONFIG_TRAIN", `lr must be a finite number >= 0, got ${o.lr}`);
  if (o.mu !== undefined && (!Number.isFinite(o.mu) || o.mu < 0)) {
    fail("E_CONFIG_TRAIN", `mu must be a finite number >= 0, got ${o.mu}`);
  }
}

/** Sum of per-sample cross-entropies and number of correct argmax predictions for logits [n, c] vs labels. */
function scoreLogits(
  logits: Float32Array,
  c: number,
  labels: ArrayLike<number>,
): { ce: number; correct: number } {
  const n = labels.length;
  let ce = 0;
  let correct = 0;
  for (let r = 0; r < n; r++) {
    const o = r * c;
    let best = 0;
    let max = logits[o];
    for (let k = 1; k < c; k++) {
      if (logits[o + k] > max) {
        max = logits[o + k];
        best = k;
      }
    }
    let s = 0;
    for (let k = 0; k < c; k++) s += Math.exp(logits[o + k] - max);
    const y = labels[r];
    ce += Math.log(s) + max - logits[o + y];
    if (best === y) correct++;
  }
  return { ce, correct };
}

/** q-quantile (0..1) of values with linear interpolation between order statistics. */
export function quantile(values: ArrayLike<number>, q: number): number {
  const a = Float64Array.from(values).sort();
  if (a.length === 0) return NaN;
  const pos = (a.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, a.length - 1);
  return a[lo] + (a[hi] - a[lo]) * (pos - lo);
}

/** Anomaly-detection accuracy: label 0 = normal; anomaly iff error > 95th percentile of the normals' errors. */
export function anomalyAccuracy(errors: ArrayLike<number>, labels: ArrayLike<number>): number {
  const normal: number[] = [];
  for (let i = 0; i < labels.length; i++) if (labels[i] === 0) normal.push(errors[i]);
  if (normal.length === 0) return NaN;
  const threshold = quantile(normal, 0.95);
  let correct = 0;
  for (let i = 0; i < labels.length; i++) if (errors[i] > threshold === (labels[i] !== 0)) correct++;
  return correct / labels.length;
}

class WasmModel implements LocalModel {
  readonly spec: ModelSpec;
  readonly layout: WeightLayout;
  readonly numParams: number;
  private readonly net: Network;
  private busy = false;
  private disposed = false;

  constructor(spec: ModelSpec, plan: Plan, weights: Float32Array) {
    this.spec = spec;
    this.layout = makeLayout(plan.tensors);
    this.numParams = this.layout.totalSize;
    this.net = new Network(plan);
    this.net.load(weights, this.layout);
  }

  private usable(what: string, mutating: boolean): void {
    if (this.disposed) fail("E_MODEL_DISPOSED", `${what}: the model was disposed`);
    if (mutating && this.busy) fail("E_MODEL_BUSY", `${what}: the model is training`);
  }

  getWeights(): Float32Array {
    this.usable("getWeights", false);
    return this.net.save(this.layout);
  }

  setWeights(w: Float32Array): void {
    this.usable("setWeights", true);
    if (!(w instanceof Float32Array)) fail("E_MODEL_LAYOUT", "weights must be a Float32Array");
    if (w.length !== this.numParams) {
      fail(
        "E_MODEL_LAYOUT",
        `weights have ${w.length} values, the model ${this.spec.kind} needs ${this.numParams}`,
      );
    }
    this.net.load(w, this.layout);
  }

  /**
   * Plain mini-batch SGD (optionally FedProx) over `epochs` seeded shuffles of `data`; the last batch of an epoch
   * may be smaller. Yields to the event loop every YIELD_MS. An abort (checked before every batch) rejects with
   * E_ABORTED and leaves the weights of the last completed step.
   */
  async train(data: Dataset, opts: TrainOptions): Promise<TrainSummary> {
    this.usable("train", true);
    checkTrainOptions(opts);
    checkData(this.net.plan, data, "train");
    this.busy = true;
    try {
      return await this.runTraining(data, opts);
    } finally {
      this.busy = false;
    }
  }

  private async runTraining(data: Dataset, opts: TrainOptions): Promise<TrainSummary> {
    const t0 = performance.now();
    const plan = this.net.plan;
    const n = data.n;
    const bs = opts.batchSize;
    const total = n * opts.epochs;
    const mu = opts.mu ?? 0;
    const rng = new Rng(opts.seed);
    const order = new Int32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;

    // FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): the local objective adds
    // μ/2·||w − w0||², w0 = the weights at the start of train(), whose gradient is μ(w − w0). With c = lr·μ the
    // update w − lr·(g + μ(w − w0)) is w·(1 − c) + c·w0 − lr·g; c·w0 is computed once.
    const c = opts.lr * mu;
    const prox = c > 0 ? { keep: tf.scalar(1 - c), anchor: this.net.params.map((p) => tf.mul(p, c)) } : null;

    const kept: { t: tf.Tensor; from: number; to: number }[] = [];
    let steps = 0;
    let done = 0;
    let lastYield = performance.now();
    const signal = opts.abortSignal;
    try {
      for (let epoch = 0; epoch < opts.epochs; epoch++) {
        rng.shuffle(order);
        const lastEpoch = epoch === opts.epochs - 1;
        for (let from = 0; from < n; from += bs) {
          if (signal?.aborted) throw new FlotillaError("E_ABORTED", "training was aborted");
          const to = Math.min(from + bs, n);
          const metric = this.step(data, order, from, to, opts.lr, prox);
          if (lastEpoch) kept.push({ t: metric, from, to });
          else metric.dispose();
          steps++;
          done += to - from;
          opts.onProgress?.(done, total);
          if (performance.now() - lastYield > YIELD_MS) {
            await new Promise((r) => setImmediate(r));
            lastYield = performance.now();
          }
        }
      }
      // Last epoch's loss and accuracy, from the outputs the steps kept (computed before each step's update,
      // like Keras's running epoch metrics). The loss is the data loss: without FedProx's proximal term.
      let loss = NaN;
      let accuracy = NaN;
      if (kept.length > 0) {
        let sum = 0;
        let correct = 0;
        for (const k of kept) {
          const v = k.t.dataSync() as Float32Array;
          if (plan.task === "classifier") {
            const labels = new Int32Array(k.to - k.from);
            for (let r = 0; r < labels.length; r++) labels[r] = data.y[order[k.from + r]];
            const s = scoreLogits(v, plan.numClasses, labels);
            sum += s.ce;
            correct += s.correct;
          } else {
            sum += v[0];
          }
        }
        if (plan.task === "classifier") {
          loss = sum / n;
          accuracy = correct / n;
        } else {
          loss = sum / (n * plan.inputSize);
        }
      }
      return { loss, accuracy, samples: done, steps, ms: performance.now() - t0 };
    } finally {
      tf.dispose(kept.map((k) => k.t));
      if (prox) tf.dispose([prox.keep, ...prox.anchor]);
    }
  }

  /**
   * One SGD step on samples order[from..to). Returns what the epoch metrics need: the logits [n, classes]
   * (classifiers) or the summed squared reconstruction error (autoencoder), computed before the update.
   */
  private step(
    data: Dataset,
    order: Int32Array,
    from: number,
    to: number,
    lr: number,
    prox: { keep: tf.Scalar; anchor: tf.Tensor[] } | null,
  ): tf.Tensor {
    const net = this.net;
    const plan = net.plan;
    const old = net.params;
    const result = tf.tidy(() => {
      const b = net.batch(data, order, from, to, true);
      const tr = net.forward(b, true);
      let dzT: tf.Tensor2D;
      let metric: tf.Tensor;
      if (plan.task === "classifier") {
        // d(mean CE)/dlogits = (softmax − onehot) / n, times lr.
        const logits = tf.transpose(tr.outT);
        dzT = tf.transpose(tf.mul(tf.sub(tf.softmax(logits), b.y as tf.Tensor2D), lr / b.n)) as tf.Tensor2D;
        metric = logits;
      } else {
        // d(mean squared error over n·D values)/dout = 2 (out − x) / (n·D), times lr.
        const diff = tf.sub(tr.outT, b.xT as tf.Tensor2D);
        dzT = tf.mul(diff, (2 * lr) / (b.n * plan.inputSize));
        metric = tf.sum(tf.square(diff));
      }
      const grads = net.backward(b, tr, dzT);
      const next = old.map((p, i) =>
        prox ? tf.sub(tf.add(tf.mul(p, prox.keep), prox.anchor[i]), grads[i]) : tf.sub(p, grads[i]),
      );
      return { next, metric };
    });
    net.params = result.next;
    tf.dispose(old);
    return result.metric;
  }

  evaluate(data: Dataset, batchSize = EVAL_BATCH): EvalSummary {
    this.usable("evaluate", false);
    checkData(this.net.plan, data, "evaluate");
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      fail("E_CONFIG_TRAIN", `evaluate batchSize must be a positive integer, got ${batchSize}`);
    }
    const plan = this.net.plan;
    const n = data.n;
    if (n === 0) return { loss: NaN, accuracy: NaN, n: 0 };
    const idx = new Int32Array(n);
    for (let i = 0; i < n; i++) idx[i] = i;
    if (plan.task === "classifier") {
      let ce = 0;
      let correct = 0;
      for (let from = 0; from < n; from += batchSize) {
        const to = Math.min(from + batchSize, n);
        const logits = tf.tidy(() => {
          const b = this.net.batch(data, idx, from, to, false);
          return tf.transpose(this.net.forward(b, false).outT);
        });
        const s = scoreLogits(logits.dataSync() as Float32Array, plan.numClasses, data.y.subarray(from, to));
        logits.dispose();
        ce += s.ce;
        correct += s.correct;
      }
      return { loss: ce / n, accuracy: correct / n, n };
    }
    const errors = new Float64Array(n);
    for (let from = 0; from < n; from += batchSize) {
      const to = Math.min(from + batchSize, n);
      const e = tf.tidy(() => {
        const b = this.net.batch(data, idx, from, to, false);
        return tf.mean(tf.square(tf.sub(this.net.forward(b, false).outT, b.xT as tf.Tensor2D)), 0);
      });
      errors.set(e.dataSync(), from);
      e.dispose();
    }
    let sum = 0;
    for (let i = 0; i < n; i++) sum += errors[i];
    return { loss: sum / n, accuracy: anomalyAccuracy(errors, data.y), n };
  }

  predict(x: Float32Array, n: number, batchSize = EVAL_BATCH): Float32Array {
    this.usable("predict", false);
    const plan = this.net.plan;
    if (!Number.isInteger(n) || n < 0 || !(x instanceof Float32Array) || x.length !== n * plan.inputSize) {
      fail(
        "E_DATA_SHAPE",
        `predict: expected ${n} samples of ${plan.inputSize} values, got ${x?.length} values`,
      );
    }
    const width = plan.task === "classifier" ? plan.numClasses : plan.inputSize;
    const out = new Float32Array(n * width);
    const data: Dataset = {
      x,
      y: new Int32Array(n),
      n,
      inputShape: [plan.inputSize],
      numClasses: plan.numClasses,
    };
    const idx = new Int32Array(n);
    for (let i = 0; i < n; i++) idx[i] = i;
    for (let from = 0; from < n; from += batchSize) {
      const to = Math.min(from + batchSize, n);
      const t = tf.tidy(() => {
        const o = tf.transpose(this.net.forward(this.net.batch(data, idx, from, to, false), false).outT);
        return plan.task === "classifier" ? tf.softmax(o) : o;
      });
      out.set(t.dataSync() as Float32Array, from * width);
      t.dispose();
    }
    return out;
  }

  dispose(): void {
    if (this.disposed) return;
    if (this.busy) fail("E_MODEL_BUSY", "dispose: the model is training");
    this.disposed = true;
    this.net.dispose();
  }
}

/**
 * Builds a model of `spec` with the initial weights of `seed` (see initialWeights) on the wasm backend,
 * initializing the backend if needed.
 */
export async function createModel(spec: ModelSpec, seed: number): Promise<LocalModel> {
  const plan = planFor(spec);
  await initBackend();
  return new WasmModel(spec, plan, initialWeights(spec, seed));
}

/** Same as createModel, for callers that already awaited initBackend(). */
export function createModelSync(spec: ModelSpec, seed: number): LocalModel {
  const plan = planFor(spec);
  wasmBackend();
  return new WasmModel(spec, plan, initialWeights(spec, seed));
}
