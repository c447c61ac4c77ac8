/**
 * The generic training path (issue 14): any layer graph of `graph-spec.ts` as a tfjs-layers model, trained by tfjs
 * autograd (`tf.variableGrads`) with SGD, heavy-ball momentum or Adam, FedProx's proximal term with each.
 *
 * - The network is built from the graph with tf.layers.* and tf.model; weights are read and written in the flat
 *   layout of `graphTensors(spec)` (per layer, Keras weight order), so a model's weights mean the same on the fast
 *   path, in ONNX and in Keras.
 * - The loss is computed from the output layer's pre-activation (the output layer is built linear when its
 *   activation is the loss's link: softmax for classification, sigmoid for binary): log-softmax cross-entropy,
 *   and max(z, 0) − z·y + log(1 + e^−|z|) for binary cross-entropy, which never take the log of a rounded
 *   probability. MSE against `Dataset.targets` (regression) or the input (reconstruction).
 * - Training mode: dropout masks drawn from our seeded `Rng` (reproducible runs, unlike tfjs's Math.random
 *   masks), BatchNormalization normalizes by the batch statistics and updates its moving mean and variance
 *   (tfjs-layers: moving ← moving·momentum + batch·(1 − momentum), batch variance biased).
 * - Optimizers (lr constant within a round; state starts fresh each train() call): sgd w ← w − lr·g; momentum
 *   v ← βv + g, w ← w − lr·v (Nesterov: w ← w − lr·(g + βv)), as tf.train.momentum / torch.optim.SGD; Adam
 *   (Kingma & Ba 2015) m ← β1·m + (1−β1)g, v ← β2·v + (1−β2)g², w ← w − lr·√(1−β2ᵗ)/(1−β1ᵗ)·m/(√v + ε), as
 *   tf.train.adam and Keras. FedProx (Li et al. 2020) adds μ(w − w0) to every trainable gradient.
 * - BatchNormalization policy "local" (FedBN, Li et al. 2021): see setWeights/getWeights below.
 */
import * as tf from "@tensorflow/tfjs";
import { PARALLEL_MIN_FLOPS, parallelIf } from "./backend";
import { forEachBatch } from "./batches";
import { fail } from "../errors";
import type { Dataset } from "../data/dataset";
import { Rng } from "../data/rng";
import { makeLayout, type WeightLayout } from "../tensor/layout";
import {
  analyzeGraph,
  bnLocalStart,
  graphMacs,
  bnMask,
  withBnFrom,
  type GraphInfo,
  type LayerInfo,
} from "./graph";
import { INPUT_NODE, type ActivationName, type GraphSpec, type OptimizerConfig } from "./graph-spec";
import { anomalyAccuracy, rocAuc, scoreLogits } from "./metrics";
import { FUSED_ACTIVATIONS, gruSequence, lstmSequence } from "./recurrent";
import type { EvalSummary, LocalModel, TrainOptions, TrainSummary } from "./types";

/** A training step of at least this many FLOP runs its kernels on the XNNPACK pool (threads > 1). */
const STEP_POOL_FLOPS = 50e6;
const EVAL_BATCH = 256;

type TfActivation =
  | "linear"
  | "relu"
  | "relu6"
  | "elu"
  | "selu"
  | "sigmoid"
  | "hardSigmoid"
  | "tanh"
  | "softmax"
  | "softplus"
  | "softsign"
  | "swish";

function tfAct(a: ActivationName | undefined, dflt: ActivationName = "linear"): TfActivation {
  const v = a ?? dflt;
  return v === "hard_sigmoid" ? "hardSigmoid" : v;
}

/** Dropout with masks from our seeded generator (tfjs's Dropout draws from Math.random). */
class SeededDropout extends tf.layers.Layer {
  static className = "FlotillaSeededDropout";
  constructor(
    private readonly rate: number,
    name: string,
    private readonly source: { rng: Rng },
  ) {
    super({ name });
  }
  override computeOutputShape(s: tf.Shape | tf.Shape[]): tf.Shape | tf.Shape[] {
    return s;
  }
  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: { training?: boolean }): tf.Tensor {
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    if (!kwargs.training || this.rate === 0) return x;
    const keep = 1 / (1 - this.rate);
    const mask = new Float32Array(x.size);
    const rng = this.source.rng;
    for (let i = 0; i < mask.length; i++) mask[i] = rng.next() >= this.rate ? keep : 0;
    return tf.tidy(() => tf.mul(x, tf.tensor(mask, x.shape)));
  }
}
tf.serialization.registerClass(SeededDropout);

/**
 * GRU with reset_after = true (Keras 2's default, CuDNN-compatible), which tfjs-layers lacks: bias [2, 3u] (input
 * and recurrent biases), and the reset gate applied after the recurrent matmul (Cho et al. 2014, as Keras):
 *   z = σ(x·Wz + bz + h·Uz + b'z), r = σ(x·Wr + br + h·Ur + b'r), ĥ = tanh(x·Wh + bh + r ⊙ (h·Uh + b'h)),
 *   h ← z ⊙ h + (1 − z) ⊙ ĥ.
 */
class ResetAfterGru extends tf.layers.Layer {
  static className = "FlotillaResetAfterGRU";
  private kernel!: tf.LayerVariable;
  private recurrent!: tf.LayerVariable;
  private bias: tf.LayerVariable | null = null;
  constructor(
    name: string,
    private readonly units: number,
    private readonly act: TfActivation,
    private readonly recAct: TfActivation,
    private readonly useBias: boolean,
    private readonly returnSequences: boolean,
  ) {
    super({ name });
  }
  override build(inputShape: tf.Shape | tf.Shape[]): void {
    const s = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    const f = s[s.length - 1] as number;
    const u = this.units;
    this.kernel = this.addWeight("kernel", [f, 3 * u], "float32", tf.initializers.zeros());
    this.recurrent = this.addWeight("recurrent_kernel", [u, 3 * u], "float32", tf.initializers.zeros());
    if (this.useBias) this.bias = this.addWeight("bias", [2, 3 * u], "float32", tf.initializers.zeros());
    this.built = true;
  }
  override computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape {
    const s = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    return this.returnSequences ? [s[0], s[1], this.units] : [s[0], this.units];
  }
  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      const x = (Array.isArray(inputs) ? inputs[0] : inputs) as tf.Tensor3D;
      const [b, t, f] = x.shape;
      const u = this.units;
      const act = (v: tf.Tensor) => activate(this.act, v);
      const rec = (v: tf.Tensor) => activate(this.recAct, v);
      const W = this.kernel.read() as tf.Tensor2D;
      const U = this.recurrent.read() as tf.Tensor2D;
      const bias = this.bias?.read();
      // Input projections for every time step at once: [b·t, 3u].
      let xw = tf.matMul(tf.reshape(x, [b * t, f]), W);
      if (bias) xw = tf.add(xw, tf.slice(bias, [0, 0], [1, 3 * u]));
      const xs = tf.unstack(tf.reshape(xw, [b, t, 3 * u]), 1);
      const bRec = bias ? tf.slice(bias, [1, 0], [1, 3 * u]) : null;
      let h: tf.Tensor = tf.zeros([b, u]);
      const outs: tf.Tensor[] = [];
      for (let i = 0; i < t; i++) {
        let hu = tf.matMul(h, U);
        if (bRec) hu = tf.add(hu, bRec);
        const [xz, xr, xh] = tf.split(xs[i], 3, 1);
        const [hz, hr, hh] = tf.split(hu, 3, 1);
        const z = rec(tf.add(xz, hz));
        const r = rec(tf.add(xr, hr));
        const cand = act(tf.add(xh, tf.mul(r, hh)));
        h = tf.add(tf.mul(z, h), tf.mul(tf.sub(1, z), cand));
        if (this.returnSequences) outs.push(h);
      }
      return this.returnSequences ? tf.stack(outs, 1) : h;
    });
  }
}
tf.serialization.registerClass(ResetAfterGru);

/**
 * Conv1D / Conv2D with dilation > 1: tfjs-core has no gradient for dilated convolutions (on any backend). A
 * convolution with kernel K dilated by d is the undilated convolution with the zero-stuffed kernel of extent
 * (k − 1)·d + 1 (Yu & Koltun 2016, "Multi-scale context aggregation by dilated convolutions"); 'same' padding
 * is the same for both (TensorFlow pads by the effective extent). The stuffing is pad + reshape + slice, so
 * autograd differentiates it.
 */
class DilatedConv extends tf.layers.Layer {
  static className = "FlotillaDilatedConv";
  private kernel!: tf.LayerVariable;
  private bias: tf.LayerVariable | null = null;
  constructor(
    name: string,
    private readonly oneD: boolean,
    private readonly filters: number,
    private readonly k: readonly [number, number],
    private readonly d: readonly [number, number],
    private readonly pad: "same" | "valid",
    private readonly act: TfActivation,
    private readonly useBias: boolean,
    private readonly outShape: readonly number[],
  ) {
    super({ name });
  }
  override build(inputShape: tf.Shape | tf.Shape[]): void {
    const s = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    const c = s[s.length - 1] as number;
    const shape = this.oneD ? [this.k[1], c, this.filters] : [this.k[0], this.k[1], c, this.filters];
    this.kernel = this.addWeight("kernel", shape, "float32", tf.initializers.zeros());
    if (this.useBias) this.bias = this.addWeight("bias", [this.filters], "float32", tf.initializers.zeros());
    this.built = true;
  }
  override computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape {
    const s = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    return [s[0], ...this.outShape];
  }
  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      let x = Array.isArray(inputs) ? inputs[0] : inputs;
      if (this.oneD) x = tf.expandDims(x, 1);
      const [kh, kw] = this.k;
      const [dh, dw] = this.d;
      const kernel = this.kernel.read();
      const c = kernel.shape[kernel.shape.length - 2];
      const f = this.filters;
      const k6 = tf.reshape(kernel, [kh, 1, kw, 1, c, f]);
      const padded = tf.pad(k6, [
        [0, 0],
        [0, dh - 1],
        [0, 0],
        [0, dw - 1],
        [0, 0],
        [0, 0],
      ]);
      const stuffed = tf.slice(
        tf.reshape(padded, [kh * dh, kw * dw, c, f]),
        [0, 0, 0, 0],
        [(kh - 1) * dh + 1, (kw - 1) * dw + 1, c, f],
      );
      let y: tf.Tensor = tf.conv2d(x as tf.Tensor4D, stuffed as tf.Tensor4D, 1, this.pad);
      if (this.bias) y = tf.add(y, this.bias.read());
      y = activate(this.act, y);
      return this.oneD ? tf.squeeze(y, [1]) : y;
    });
  }
}
tf.serialization.registerClass(DilatedConv);

/**
 * LSTM / GRU on the fused recurrent ops of `recurrent.ts` (the time loop and its gradient in JS): the input
 * projections of every step are one matmul; weights in Keras order and shapes (kernel, recurrent_kernel, bias).
 */
class FusedRecurrent extends tf.layers.Layer {
  static className = "FlotillaFusedRecurrent";
  private kernel!: tf.LayerVariable;
  private recurrent!: tf.LayerVariable;
  private bias: tf.LayerVariable | null = null;
  constructor(
    name: string,
    private readonly cell: "LSTM" | "GRU",
    private readonly units: number,
    private readonly act: ActivationName,
    private readonly recAct: ActivationName,
    private readonly useBias: boolean,
    private readonly returnSequences: boolean,
    private readonly resetAfter: boolean,
  ) {
    super({ name });
  }
  private get gates(): number {
    return this.cell === "LSTM" ? 4 : 3;
  }
  override build(inputShape: tf.Shape | tf.Shape[]): void {
    const s = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    const f = s[s.length - 1] as number;
    const G = this.gates * this.units;
    this.kernel = this.addWeight("kernel", [f, G], "float32", tf.initializers.zeros());
    this.recurrent = this.addWeight("recurrent_kernel", [this.units, G], "float32", tf.initializers.zeros());
    if (this.useBias) {
      const shape = this.cell === "GRU" && this.resetAfter ? [2, G] : [G];
      this.bias = this.addWeight("bias", shape, "float32", tf.initializers.zeros());
    }
    this.built = true;
  }
  override computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape {
    const s = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    return this.returnSequences ? [s[0], s[1], this.units] : [s[0], this.units];
  }
  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      const x = (Array.isArray(inputs) ? inputs[0] : inputs) as tf.Tensor3D;
      const [b, t, f] = x.shape;
      const u = this.units;
      const G = this.gates * u;
      const bias = this.bias?.read();
      let xw = tf.matMul(tf.reshape(x, [b * t, f]), this.kernel.read() as tf.Tensor2D);
      const split = this.cell === "GRU" && this.resetAfter;
      if (bias) xw = tf.add(xw, split ? tf.reshape(tf.slice(bias, [0, 0], [1, G]), [G]) : bias);
      const xw3 = tf.reshape(xw, [b, t, G]) as tf.Tensor3D;
      const U = this.recurrent.read() as tf.Tensor2D;
      const hs =
        this.cell === "LSTM"
          ? lstmSequence(xw3, U, this.act, this.recAct)
          : gruSequence(
              xw3,
              U,
              (bias && split
                ? tf.reshape(tf.slice(bias, [1, 0], [1, G]), [G])
                : tf.zeros([G])) as tf.Tensor1D,
              this.resetAfter,
              this.act,
              this.recAct,
            );
      if (this.returnSequences) return hs;
      return tf.reshape(tf.slice(hs, [0, t - 1, 0], [b, 1, u]), [b, u]);
    });
  }
}
tf.serialization.registerClass(FusedRecurrent);

/** BatchNormalization without γ or β (tfjs-layers' training mode reads both unconditionally). */
class PartialBatchNorm extends tf.layers.Layer {
  static className = "FlotillaBatchNorm";
  private gamma: tf.LayerVariable | null = null;
  private beta: tf.LayerVariable | null = null;
  private mean!: tf.LayerVariable;
  private variance!: tf.LayerVariable;
  constructor(
    name: string,
    private readonly momentum: number,
    private readonly epsilon: number,
    private readonly center: boolean,
    private readonly scale: boolean,
  ) {
    super({ name });
  }
  override build(inputShape: tf.Shape | tf.Shape[]): void {
    const s = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    const c = s[s.length - 1] as number;
    if (this.scale) this.gamma = this.addWeight("gamma", [c], "float32", tf.initializers.ones());
    if (this.center) this.beta = this.addWeight("beta", [c], "float32", tf.initializers.zeros());
    this.mean = this.addWeight("moving_mean", [c], "float32", tf.initializers.zeros(), undefined, false);
    this.variance = this.addWeight(
      "moving_variance",
      [c],
      "float32",
      tf.initializers.ones(),
      undefined,
      false,
    );
    this.built = true;
  }
  override computeOutputShape(s: tf.Shape | tf.Shape[]): tf.Shape | tf.Shape[] {
    return s;
  }
  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: { training?: boolean }): tf.Tensor {
    return tf.tidy(() => {
      const x = Array.isArray(inputs) ? inputs[0] : inputs;
      const g = this.gamma?.read();
      const bt = this.beta?.read();
      // (x − mean)·(γ / √(var + ε)) + β by elementary ops: tf.batchNorm records an undefined input on the tape
      // when γ or β is absent.
      const norm = (mean: tf.Tensor, variance: tf.Tensor) => {
        let scale = tf.rsqrt(tf.add(variance, this.epsilon));
        if (g) scale = tf.mul(scale, g);
        const y = tf.mul(tf.sub(x, mean), scale);
        return bt ? tf.add(y, bt) : y;
      };
      if (!kwargs.training) return norm(this.mean.read(), this.variance.read());
      const axes = [...Array(x.rank - 1).keys()];
      const { mean, variance } = tf.moments(x, axes);
      for (const [v, batch] of [
        [this.mean, mean],
        [this.variance, variance],
      ] as const) {
        const old = v.read();
        v.write(tf.sub(old, tf.mul(tf.sub(old, batch), 1 - this.momentum)));
      }
      return norm(mean, variance);
    });
  }
}
tf.serialization.registerClass(PartialBatchNorm);

function activate(a: TfActivation, x: tf.Tensor): tf.Tensor {
  switch (a) {
    case "linear":
      return x;
    case "relu":
      return tf.relu(x);
    case "relu6":
      return tf.relu6(x);
    case "elu":
      return tf.elu(x);
    case "selu":
      return tf.selu(x);
    case "sigmoid":
      return tf.sigmoid(x);
    case "hardSigmoid":
      return tf.clipByValue(tf.add(tf.mul(x, 0.2), 0.5), 0, 1);
    case "tanh":
      return tf.tanh(x);
    case "softmax":
      return tf.softmax(x);
    case "softplus":
      return tf.softplus(x);
    case "softsign":
      return tf.div(x, tf.add(tf.abs(x), 1));
    case "swish":
      return tf.mul(x, tf.sigmoid(x));
  }
}

const Z = "zeros";

/** The tfjs-layers layer of one graph layer; `linear` forces a linear activation (the output's loss link). */
function makeLayer(
  info: LayerInfo,
  linear: boolean,
  dropout: { rng: Rng },
  fusedRecurrent: boolean,
): tf.layers.Layer {
  const l = info.layer;
  const name = l.name;
  if ((l.type === "LSTM" || l.type === "GRU") && fusedRecurrent) {
    const a = l.activation ?? "tanh";
    const ra = l.recurrentActivation ?? "sigmoid";
    if (FUSED_ACTIVATIONS.includes(a) && FUSED_ACTIVATIONS.includes(ra)) {
      return new FusedRecurrent(
        name,
        l.type,
        l.units,
        a,
        ra,
        l.useBias ?? true,
        l.returnSequences ?? false,
        l.type === "GRU" && l.resetAfter === true,
      );
    }
  }
  const act = (a: ActivationName | undefined) => (linear ? "linear" : tfAct(a));
  switch (l.type) {
    case "Dense":
      return tf.layers.dense({
        name,
        units: l.units,
        activation: act(l.activation),
        useBias: l.useBias ?? true,
        kernelInitializer: Z,
      });
    case "Conv1D":
      if ((l.dilationRate ?? 1) > 1) {
        const d = l.dilationRate ?? 1;
        return new DilatedConv(
          name,
          true,
          l.filters,
          [1, l.kernelSize],
          [1, d],
          l.padding ?? "valid",
          act(l.activation),
          l.useBias ?? true,
          info.outShape,
        );
      }
      return tf.layers.conv1d({
        name,
        filters: l.filters,
        kernelSize: l.kernelSize,
        strides: l.strides ?? 1,
        padding: l.padding ?? "valid",
        dilationRate: l.dilationRate ?? 1,
        activation: act(l.activation),
        useBias: l.useBias ?? true,
        kernelInitializer: Z,
      });
    case "Conv2D":
      if (l.dilationRate && (l.dilationRate[0] > 1 || l.dilationRate[1] > 1)) {
        return new DilatedConv(
          name,
          false,
          l.filters,
          l.kernelSize,
          l.dilationRate,
          l.padding ?? "valid",
          act(l.activation),
          l.useBias ?? true,
          info.outShape,
        );
      }
      return tf.layers.conv2d({
        name,
        filters: l.filters,
        kernelSize: [...l.kernelSize],
        strides: [...(l.strides ?? [1, 1])],
        padding: l.padding ?? "valid",
        dilationRate: [...(l.dilationRate ?? [1, 1])] as [number, number],
        activation: act(l.activation),
        useBias: l.useBias ?? true,
        kernelInitializer: Z,
      });
    case "DepthwiseConv2D":
      return tf.layers.depthwiseConv2d({
        name,
        kernelSize: [...l.kernelSize],
        strides: [...(l.strides ?? [1, 1])],
        padding: l.padding ?? "valid",
        depthMultiplier: l.depthMultiplier ?? 1,
        activation: act(l.activation),
        useBias: l.useBias ?? true,
        depthwiseInitializer: Z,
      });
    case "SeparableConv2D":
      return tf.layers.separableConv2d({
        name,
        filters: l.filters,
        kernelSize: [...l.kernelSize],
        strides: [...(l.strides ?? [1, 1])],
        padding: l.padding ?? "valid",
        depthMultiplier: l.depthMultiplier ?? 1,
        activation: act(l.activation),
        useBias: l.useBias ?? true,
        depthwiseInitializer: Z,
        pointwiseInitializer: Z,
      });
    case "MaxPooling1D":
      return tf.layers.maxPooling1d({
        name,
        poolSize: l.poolSize,
        strides: l.strides ?? l.poolSize,
        padding: l.padding ?? "valid",
      });
    case "AveragePooling1D":
      return tf.layers.averagePooling1d({
        name,
        poolSize: l.poolSize,
        strides: l.strides ?? l.poolSize,
        padding: l.padding ?? "valid",
      });
    case "MaxPooling2D":
      return tf.layers.maxPooling2d({
        name,
        poolSize: [...l.poolSize],
        strides: [...(l.strides ?? l.poolSize)],
        padding: l.padding ?? "valid",
      });
    case "AveragePooling2D":
      return tf.layers.averagePooling2d({
        name,
        poolSize: [...l.poolSize],
        strides: [...(l.strides ?? l.poolSize)],
        padding: l.padding ?? "valid",
      });
    case "GlobalAveragePooling1D":
      return tf.layers.globalAveragePooling1d({ name });
    case "GlobalAveragePooling2D":
      return tf.layers.globalAveragePooling2d({ name });
    case "Flatten":
      return tf.layers.flatten({ name });
    case "Reshape":
      return tf.layers.reshape({ name, targetShape: [...info.outShape] });
    case "Dropout":
      return new SeededDropout(l.rate, name, dropout);
    case "BatchNormalization": {
      const center = l.center ?? true;
      const scale = l.scale ?? true;
      const momentum = l.momentum ?? 0.99;
      const epsilon = l.epsilon ?? 1e-3;
      if (!center || !scale) return new PartialBatchNorm(name, momentum, epsilon, center, scale);
      return tf.layers.batchNormalization({ name, axis: -1, momentum, epsilon });
    }
    case "Activation":
      return tf.layers.activation({ name, activation: act(l.activation) });
    case "LSTM":
      return tf.layers.lstm({
        name,
        units: l.units,
        activation: tfAct(l.activation, "tanh"),
        recurrentActivation: tfAct(l.recurrentActivation, "sigmoid"),
        returnSequences: l.returnSequences ?? false,
        useBias: l.useBias ?? true,
        unitForgetBias: false, // the initial values come from our layout, not tfjs's initializer
        kernelInitializer: Z,
        recurrentInitializer: Z,
      });
    case "GRU":
      if (l.resetAfter) {
        return new ResetAfterGru(
          name,
          l.units,
          tfAct(l.activation, "tanh"),
          tfAct(l.recurrentActivation, "sigmoid"),
          l.useBias ?? true,
          l.returnSequences ?? false,
        );
      }
      return tf.layers.gru({
        name,
        units: l.units,
        activation: tfAct(l.activation, "tanh"),
        recurrentActivation: tfAct(l.recurrentActivation, "sigmoid"),
        returnSequences: l.returnSequences ?? false,
        useBias: l.useBias ?? true,
        kernelInitializer: Z,
        recurrentInitializer: Z,
      });
    case "Embedding":
      return tf.layers.embedding({
        name,
        inputDim: l.inputDim,
        outputDim: l.outputDim,
        embeddingsInitializer: Z,
      });
    case "Add":
      return tf.layers.add({ name });
    case "Concatenate":
      return tf.layers.concatenate({ name, axis: -1 });
  }
}

interface Slot {
  readonly variable: tf.Variable;
  readonly trainable: boolean;
  readonly shape: number[];
  readonly offset: number;
  readonly size: number;
}

function checkTrainOptions(o: TrainOptions): void {
  if (!Number.isInteger(o.epochs) || o.epochs < 0)
    fail("E_CONFIG_TRAIN", `epochs must be an integer >= 0, got ${o.epochs}`);
  if (!Number.isInteger(o.batchSize) || o.batchSize < 1)
    fail("E_CONFIG_TRAIN", `batchSize must be a positive integer, got ${o.batchSize}`);
  if (!Number.isFinite(o.lr) || o.lr < 0)
    fail("E_CONFIG_TRAIN", `lr must be a finite number >= 0, got ${o.lr}`);
  if (o.mu !== undefined && (!Number.isFinite(o.mu) || o.mu < 0))
    fail("E_CONFIG_TRAIN", `mu must be a finite number >= 0, got ${o.mu}`);
  checkOptimizer(o.optimizer);
}

/** Checks an optimizer config (E_CONFIG_TRAIN). */
export function checkOptimizer(o: OptimizerConfig | undefined): void {
  if (o === undefined) return;
  const bad = (msg: string) => fail("E_CONFIG_TRAIN", `optimizer: ${msg}`);
  const frac = (v: unknown, what: string) => {
    if (v !== undefined && !(typeof v === "number" && v >= 0 && v < 1))
      bad(`${what} must be in [0, 1), got ${JSON.stringify(v)}`);
  };
  switch (o?.name) {
    case "sgd":
      return;
    case "momentum":
      frac(o.momentum, "momentum");
      if (o.nesterov !== undefined && typeof o.nesterov !== "boolean") bad("nesterov must be true or false");
      return;
    case "adam":
      frac(o.beta1, "beta1");
      frac(o.beta2, "beta2");
      if (o.epsilon !== undefined && !(typeof o.epsilon === "number" && o.epsilon > 0))
        bad("epsilon must be > 0");
      return;
    default:
      bad(
        `unknown optimizer ${JSON.stringify((o as { name?: unknown })?.name)} (expected sgd, momentum or adam)`,
      );
  }
}

/** A layer graph on the current tfjs backend (wasm in production; the tests also run it on cpu). */
export class GenericModel implements LocalModel {
  readonly spec: GraphSpec;
  readonly layout: WeightLayout;
  readonly numParams: number;
  private readonly info: GraphInfo;
  /** Forward multiply-accumulates per sample (graphMacs): picks the thread pool or this thread per step. */
  private readonly macs: number;
  private readonly model: tf.LayersModel;
  private readonly slots: Slot[];
  private readonly mask: boolean[];
  private readonly dropout = { rng: new Rng(0) };
  private readonly inputSize: number;
  private readonly outputSize: number;
  private readonly inputDim: number;
  /** BN policy local: the BN values of the last incoming (global) model, which getWeights reports. */
  private incomingBn: Float32Array | null = null;
  /** BN policy local: whether the BN entries hold this device's own trained values. */
  private hasLocalBn = false;
  private busy = false;
  private disposed = false;
  private readonly fusedRecurrent: boolean;

  /**
   * `opts.fusedRecurrent` (default true): LSTM/GRU on the fused ops of recurrent.ts; false builds tfjs-layers'
   * cells (the reference the tests compare against).
   */
  constructor(spec: GraphSpec, weights: Float32Array, opts: { fusedRecurrent?: boolean } = {}) {
    this.fusedRecurrent = opts.fusedRecurrent ?? true;
    this.info = analyzeGraph(spec);
    this.macs = graphMacs(this.info);
    this.spec = this.info.spec;
    this.layout = makeLayout(this.info.tensors);
    this.numParams = this.layout.totalSize;
    this.mask = bnMask(this.info.tensors);
    this.inputSize = spec.inputShape.reduce((a, b) => a * b, 1);
    this.outputSize = this.info.outputShape.reduce((a, b) => a * b, 1);
    const emb = this.info.layers.find((l) => l.layer.type === "Embedding")?.layer;
    this.inputDim = emb?.type === "Embedding" ? emb.inputDim : 0;
    this.model = this.build();
    // Variables per layer in Keras weight order (tfjs-layers: trainable then non-trainable, which is Keras's order
    // for every supported layer), checked against the layout.
    this.slots = [];
    let t = 0;
    for (const li of this.info.layers) {
      const layer = this.model.getLayer(li.layer.name);
      for (const lv of layer.weights) {
        const e = this.layout.entries[t];
        const gt = this.info.tensors[t];
        if (e === undefined || e.shape.join() !== lv.shape.join() || gt.trainable !== lv.trainable) {
          this.model.dispose();
          fail(
            "E_MODEL_LAYOUT",
            `layer '${li.layer.name}': tfjs weight ${lv.name} [${lv.shape}] does not match the layout's ${e?.name} [${e?.shape}]`,
          );
        }
        this.slots.push({
          variable: lv.read() as tf.Variable,
          trainable: gt.trainable,
          shape: [...e.shape],
          offset: e.offset,
          size: e.size,
        });
        t++;
      }
    }
    if (t !== this.layout.entries.length) {
      this.model.dispose();
      fail(
        "E_MODEL_LAYOUT",
        `the tfjs model has ${t} weight tensors, the layout ${this.layout.entries.length}`,
      );
    }
    this.load(weights);
  }

  private build(): tf.LayersModel {
    const spec = this.info.spec;
    const input = tf.input({
      shape: [...spec.inputShape],
      dtype: spec.inputDtype ?? "float32",
      name: `${INPUT_NODE}_${this.info.layers[0].layer.name}`,
    });
    const nodes = new Map<string, tf.SymbolicTensor>([[INPUT_NODE, input]]);
    for (const li of this.info.layers) {
      const isOut = li.layer.name === this.info.output;
      const layer = makeLayer(li, isOut && this.info.head !== null, this.dropout, this.fusedRecurrent);
      const ins = li.inputs.map((n) => nodes.get(n) as tf.SymbolicTensor);
      nodes.set(li.layer.name, layer.apply(ins.length === 1 ? ins[0] : ins) as tf.SymbolicTensor);
    }
    return tf.model({ inputs: input, outputs: nodes.get(this.info.output) as tf.SymbolicTensor });
  }

  private usable(what: string, mutating: boolean): void {
    if (this.disposed) fail("E_MODEL_DISPOSED", `${what}: the model was disposed`);
    if (mutating && this.busy) fail("E_MODEL_BUSY", `${what}: the model is training`);
  }

  private load(w: Float32Array): void {
    for (const s of this.slots) {
      const t = tf.tensor(w.subarray(s.offset, s.offset + s.size), s.shape);
      s.variable.assign(t);
      t.dispose();
    }
  }

  private save(): Float32Array {
    const out = new Float32Array(this.numParams);
    for (const s of this.slots) out.set(s.variable.dataSync() as Float32Array, s.offset);
    return out;
  }

  private get bnLocal(): boolean {
    return this.spec.bnPolicy === "local" && this.mask.some((m) => m);
  }

  /**
   * The weights to upload. Under BN policy "local" the BN entries are those of the last setWeights (the global
   * model), so an update's BN deltas are zero and the device's own BN values never leave it.
   */
  getWeights(): Float32Array {
    this.usable("getWeights", false);
    const w = this.save();
    return this.bnLocal && this.incomingBn !== null
      ? withBnFrom(this.layout, this.mask, w, this.incomingBn)
      : w;
  }

  /**
   * Loads weights. Under BN policy "local", once this model has trained, its own BN entries are kept over the
   * incoming ones (bnLocalStart); the incoming BN values are remembered for getWeights.
   */
  setWeights(w: Float32Array): void {
    this.usable("setWeights", true);
    if (!(w instanceof Float32Array)) fail("E_MODEL_LAYOUT", "weights must be a Float32Array");
    if (w.length !== this.numParams)
      fail("E_MODEL_LAYOUT", `weights have ${w.length} values, the model needs ${this.numParams}`);
    if (this.bnLocal) {
      const start = bnLocalStart(this.layout, this.mask, this.hasLocalBn ? this.save() : null, w);
      this.incomingBn = new Float32Array(w);
      this.load(start);
      return;
    }
    this.load(w);
  }

  /**
   * BN policy "local": the device's own weights (its BN values included) once it has trained, else null (also
   * under "aggregate"). A trainer that builds a new model per round keeps this and hands it to the next round's
   * model with restoreLocalState before setWeights, so FedBN's statistics persist on the device.
   */
  localState(): Float32Array | null {
    this.usable("localState", false);
    return this.bnLocal && this.hasLocalBn ? this.save() : null;
  }

  /** BN policy "local": adopt a previous round's localState (its BN entries) as this device's own. */
  restoreLocalState(w: Float32Array): void {
    this.usable("restoreLocalState", true);
    if (!this.bnLocal) return;
    if (!(w instanceof Float32Array) || w.length !== this.numParams) {
      fail("E_MODEL_LAYOUT", `local state has ${w?.length} values, the model needs ${this.numParams}`);
    }
    this.load(bnLocalStart(this.layout, this.mask, w, this.save()));
    this.hasLocalBn = true;
  }

  private checkData(data: Dataset, what: string, train: boolean): void {
    const size = data.inputShape.reduce((a, b) => a * b, 1);
    if (size !== this.inputSize)
      fail(
        "E_DATA_SHAPE",
        `${what}: the model takes samples of ${this.inputSize} values, the data has [${data.inputShape}]`,
      );
    if (data.x.length !== data.n * size || data.y.length !== data.n)
      fail("E_DATA_SHAPE", `${what}: dataset arrays do not match n = ${data.n}`);
    const task = this.spec.task;
    if (task === "classification" || task === "binary") {
      const nc = this.spec.numClasses;
      for (let i = 0; i < data.n; i++) {
        const y = data.y[i];
        if (!(y >= 0 && y < nc))
          fail("E_DATA_LABEL", `${what}: label ${y} of sample ${i} is outside 0..${nc - 1}`);
      }
    }
    if (task === "regression" && (train || what === "evaluate")) {
      if (
        data.targets === undefined ||
        data.targetSize !== this.outputSize ||
        data.targets.length !== data.n * this.outputSize
      ) {
        fail(
          "E_DATA_SHAPE",
          `${what}: a regression model of ${this.outputSize} outputs needs targets of that size per sample`,
        );
      }
    }
    if (this.inputDim > 0) {
      for (let i = 0; i < data.x.length; i++) {
        const v = data.x[i];
        if (!(Number.isInteger(v) && v >= 0 && v < this.inputDim)) {
          fail(
            "E_DATA_PARSE",
            `${what}: token id ${v} of sample ${Math.floor(i / size)} is not an integer in 0..${this.inputDim - 1}`,
          );
        }
      }
    }
  }

  /** The batch of samples idx[from..to) as an input tensor. */
  private input(data: Dataset, idx: ArrayLike<number>, from: number, to: number): tf.Tensor {
    const n = to - from;
    const d = this.inputSize;
    const int = this.inputDim > 0;
    const buf = int ? new Int32Array(n * d) : new Float32Array(n * d);
    for (let r = 0; r < n; r++) {
      const j = idx[from + r];
      buf.set(data.x.subarray(j * d, (j + 1) * d), r * d);
    }
    return tf.tensor(buf, [n, ...this.spec.inputShape], int ? "int32" : "float32");
  }

  /** The loss target of a batch: one-hot labels, 0/1 labels [n, 1], regression targets or the input itself. */
  private target(data: Dataset, idx: ArrayLike<number>, from: number, to: number, x: tf.Tensor): tf.Tensor {
    const n = to - from;
    const task = this.spec.task;
    const outShape = [n, ...this.info.outputShape];
    if (task === "classification") {
      const nc = this.spec.numClasses;
      const oh = new Float32Array(n * nc);
      for (let r = 0; r < n; r++) oh[r * nc + data.y[idx[from + r]]] = 1;
      return tf.tensor(oh, [n, nc]);
    }
    if (task === "binary") {
      const y = new Float32Array(n);
      for (let r = 0; r < n; r++) y[r] = data.y[idx[from + r]];
      return tf.tensor(y, [n, 1]);
    }
    if (task === "regression") {
      const k = this.outputSize;
      const t = new Float32Array(n * k);
      const targets = data.targets as Float32Array;
      for (let r = 0; r < n; r++) {
        const j = idx[from + r];
        t.set(targets.subarray(j * k, (j + 1) * k), r * k);
      }
      return tf.tensor(t, outShape);
    }
    return tf.reshape(x, outShape);
  }

  /** Mean loss of a batch from the model's (pre-link) output. */
  private loss(z: tf.Tensor, target: tf.Tensor): tf.Scalar {
    switch (this.spec.task) {
      case "classification":
        return tf.neg(tf.mean(tf.sum(tf.mul(target, tf.logSoftmax(z)), 1))) as tf.Scalar;
      case "binary":
        // max(z, 0) − z·y + log(1 + e^−|z|) (TensorFlow's sigmoid_cross_entropy_with_logits).
        return tf.mean(
          tf.add(tf.sub(tf.relu(z), tf.mul(z, target)), tf.log1p(tf.exp(tf.neg(tf.abs(z))))),
        ) as tf.Scalar;
      default:
        return tf.mean(tf.square(tf.sub(z, target))) as tf.Scalar;
    }
  }

  async train(data: Dataset, opts: TrainOptions): Promise<TrainSummary> {
    this.usable("train", true);
    checkTrainOptions(opts);
    this.checkData(data, "train", true);
    this.busy = true;
    try {
      const r = await this.runTraining(data, opts);
      this.hasLocalBn = true;
      return r;
    } finally {
      this.busy = false;
    }
  }

  private async runTraining(data: Dataset, opts: TrainOptions): Promise<TrainSummary> {
    const t0 = performance.now();
    const n = data.n;
    const mu = opts.mu ?? 0;
    const lr = opts.lr;
    // Dropout masks: a generator of their own, seeded from the round's seed (independent of the shuffles).
    this.dropout.rng = new Rng((opts.seed ^ 0x5bd1e995) >>> 0);
    const trainable = this.slots.filter((s) => s.trainable);
    const vars = trainable.map((s) => s.variable);
    const opt = opts.optimizer ?? { name: "sgd" };
    const anchor = mu > 0 ? vars.map((v) => tf.clone(v)) : null;
    const state1: tf.Tensor[] | null =
      opt.name === "sgd" ? null : vars.map((v) => tf.zerosLike(v) as tf.Tensor);
    const state2: tf.Tensor[] | null =
      opt.name === "adam" ? vars.map((v) => tf.zerosLike(v) as tf.Tensor) : null;
    const classifier = this.spec.task === "classification" || this.spec.task === "binary";
    let lossSum: tf.Tensor = tf.scalar(0);
    let correctSum: tf.Tensor = tf.scalar(0);
    let lastEpochSamples = 0;
    try {
      const { steps, samples } = await forEachBatch(n, opts, (order, from, to, lastEpoch, t) => {
        const b = to - from;
        // A step of a small model (e.g. a sensor LSTM) runs faster on this thread than woken pool threads;
        // a large one (the McMahan cnn) uses the pool for every kernel. Forward + backward ≈ 3 × 2 FLOP/MAC.
        parallelIf(6 * this.macs * b >= STEP_POOL_FLOPS ? PARALLEL_MIN_FLOPS : 0, () =>
          tf.tidy(() => {
            const x = this.input(data, order, from, to);
            const target = this.target(data, order, from, to, x);
            // variableGrads runs f in a tidy of its own: the output is kept for the epoch's accuracy, then freed.
            let kept: tf.Tensor | null = null;
            const { value, grads } = tf.variableGrads(() => {
              const out = this.model.apply(x, { training: true }) as tf.Tensor;
              if (lastEpoch && classifier) kept = tf.keep(out);
              return this.loss(out, target);
            }, vars);
            const z = kept as tf.Tensor | null;
            vars.forEach((v, i) => {
              let g = grads[v.name];
              if (anchor) g = tf.add(g, tf.mul(tf.sub(v, anchor[i]), mu));
              let step: tf.Tensor;
              if (opt.name === "sgd") step = tf.mul(g, lr);
              else if (opt.name === "momentum") {
                const beta = opt.momentum ?? 0.9;
                const m = tf.add(tf.mul(state1![i], beta), g);
                tf.dispose(state1![i]);
                state1![i] = tf.keep(m);
                step = tf.mul(opt.nesterov ? tf.add(g, tf.mul(m, beta)) : m, lr);
              } else {
                const b1 = opt.beta1 ?? 0.9;
                const b2 = opt.beta2 ?? 0.999;
                const eps = opt.epsilon ?? 1e-7;
                const m = tf.add(tf.mul(state1![i], b1), tf.mul(g, 1 - b1));
                const v2 = tf.add(tf.mul(state2![i], b2), tf.mul(tf.square(g), 1 - b2));
                tf.dispose([state1![i], state2![i]]);
                state1![i] = tf.keep(m);
                state2![i] = tf.keep(v2);
                const lrT = (lr * Math.sqrt(1 - Math.pow(b2, t))) / (1 - Math.pow(b1, t));
                step = tf.mul(tf.div(m, tf.add(tf.sqrt(v2), eps)), lrT);
              }
              v.assign(tf.sub(v, step));
            });
            if (lastEpoch) {
              const nextLoss = tf.add(lossSum, tf.mul(value, b));
              tf.dispose(lossSum);
              lossSum = tf.keep(nextLoss);
              if (z !== null) {
                const zt = z;
                const hits =
                  this.spec.task === "classification"
                    ? tf.sum(tf.cast(tf.equal(tf.argMax(zt, 1), tf.argMax(target, 1)), "float32"))
                    : tf.sum(tf.cast(tf.equal(tf.cast(tf.greater(zt, 0), "float32"), target), "float32"));
                const next = tf.add(correctSum, hits);
                tf.dispose(correctSum);
                correctSum = tf.keep(next);
                z.dispose();
              }
            }
          }),
        );
        if (lastEpoch) lastEpochSamples += b;
      });
      let loss = NaN;
      let accuracy = NaN;
      if (lastEpochSamples > 0) {
        loss = (lossSum.dataSync()[0] as number) / lastEpochSamples;
        if (classifier) accuracy = (correctSum.dataSync()[0] as number) / lastEpochSamples;
      }
      return { loss, accuracy, samples, steps, ms: performance.now() - t0 };
    } finally {
      tf.dispose([lossSum, correctSum, ...(anchor ?? []), ...(state1 ?? []), ...(state2 ?? [])]);
    }
  }

  /** Outputs (pre-link) of every sample, batched: [n × output size]. */
  private outputs(data: Dataset, batchSize: number): Float32Array {
    const n = data.n;
    const out = new Float32Array(n * this.outputSize);
    const idx = new Int32Array(n);
    for (let i = 0; i < n; i++) idx[i] = i;
    for (let from = 0; from < n; from += batchSize) {
      const to = Math.min(from + batchSize, n);
      const t = tf.tidy(
        () => this.model.apply(this.input(data, idx, from, to), { training: false }) as tf.Tensor,
      );
      out.set(t.dataSync() as Float32Array, from * this.outputSize);
      t.dispose();
    }
    return out;
  }

  evaluate(data: Dataset, batchSize = EVAL_BATCH): EvalSummary {
    this.usable("evaluate", false);
    this.checkData(data, "evaluate", false);
    if (!Number.isInteger(batchSize) || batchSize < 1)
      fail("E_CONFIG_TRAIN", `evaluate batchSize must be a positive integer, got ${batchSize}`);
    const n = data.n;
    if (n === 0) return { loss: NaN, accuracy: NaN, n: 0 };
    const z = this.outputs(data, batchSize);
    const k = this.outputSize;
    switch (this.spec.task) {
      case "classification": {
        const s = scoreLogits(z, k, data.y);
        return { loss: s.ce / n, accuracy: s.correct / n, n };
      }
      case "binary": {
        let bce = 0;
        let correct = 0;
        for (let i = 0; i < n; i++) {
          const v = z[i];
          const y = data.y[i];
          bce += Math.max(v, 0) - v * y + Math.log1p(Math.exp(-Math.abs(v)));
          if ((v > 0 ? 1 : 0) === y) correct++;
        }
        return { loss: bce / n, accuracy: correct / n, n, auc: rocAuc(z, data.y) };
      }
      case "regression": {
        const t = data.targets as Float32Array;
        let se = 0;
        let ae = 0;
        for (let i = 0; i < z.length; i++) {
          const d = z[i] - t[i];
          se += d * d;
          ae += Math.abs(d);
        }
        return { loss: se / z.length, accuracy: NaN, n, mae: ae / z.length };
      }
      case "reconstruction": {
        const errors = new Float64Array(n);
        let ae = 0;
        for (let i = 0; i < n; i++) {
          let se = 0;
          for (let j = 0; j < k; j++) {
            const d = z[i * k + j] - data.x[i * k + j];
            se += d * d;
            ae += Math.abs(d);
          }
          errors[i] = se / k;
        }
        let sum = 0;
        for (let i = 0; i < n; i++) sum += errors[i];
        return { loss: sum / n, accuracy: anomalyAccuracy(errors, data.y), n, mae: ae / (n * k) };
      }
    }
  }

  /** Softmax probabilities (classification), sigmoid probabilities [n, 1] (binary), or the outputs. */
  predict(x: Float32Array, n: number, batchSize = EVAL_BATCH): Float32Array {
    this.usable("predict", false);
    if (!Number.isInteger(n) || n < 0 || !(x instanceof Float32Array) || x.length !== n * this.inputSize) {
      fail(
        "E_DATA_SHAPE",
        `predict: expected ${n} samples of ${this.inputSize} values, got ${x?.length} values`,
      );
    }
    const data: Dataset = {
      x,
      y: new Int32Array(n),
      n,
      inputShape: this.spec.inputShape,
      numClasses: this.spec.numClasses,
    };
    if (this.inputDim > 0) this.checkData(data, "predict", false);
    const z = this.outputs(data, batchSize);
    const k = this.outputSize;
    if (this.info.head === "sigmoid" || (this.spec.task === "binary" && this.info.head === null)) {
      for (let i = 0; i < z.length; i++) z[i] = 1 / (1 + Math.exp(-z[i]));
    } else if (this.spec.task === "classification") {
      for (let r = 0; r < n; r++) {
        let max = -Infinity;
        for (let j = 0; j < k; j++) max = Math.max(max, z[r * k + j]);
        let s = 0;
        for (let j = 0; j < k; j++) s += z[r * k + j] = Math.exp(z[r * k + j] - max);
        for (let j = 0; j < k; j++) z[r * k + j] /= s;
      }
    }
    return z;
  }

  dispose(): void {
    if (this.disposed) return;
    if (this.busy) fail("E_MODEL_BUSY", "dispose: the model is training");
    this.disposed = true;
    this.model.dispose();
  }
}
