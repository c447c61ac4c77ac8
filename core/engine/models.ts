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
 * The files by concept: `plan.ts` (architectures, weight layout, initial weights; pure JS), `network.ts` (forward
 * and backward pass on tfjs), `backprop.ts` (convolution and max-pool gradients), `metrics.ts` (loss, accuracy,
 * anomaly accuracy; pure JS), `wasm-tensors.ts` (tensors in wasm memory), and this file: the LocalModel (SGD,
 * FedProx, evaluation, prediction). Code that needs only layouts or initial weights (the Function, ONNX export)
 * imports `plan.ts`, which loads no tfjs.
 */
import * as tf from "@tensorflow/tfjs";
import { fail } from "../errors";
import type { Dataset } from "../data/dataset";
import { makeLayout } from "../tensor/layout";
import type { WeightLayout } from "../tensor/layout";
import { initBackend, serialKernels, wasmBackend } from "./backend";
import { forEachBatch } from "./batches";
import { anomalyAccuracy, scoreLogits } from "./metrics";
import type { ModelSpec, PresetSpec } from "./model-spec";
import { Network } from "./network";
import { GenericModel, checkOptimizer } from "./generic";
import { matchPreset, presetGraph } from "./graph";
import { initialWeights, modelLayout, planFor, type Plan } from "./plan";
import type { EvalSummary, LocalModel, TrainOptions, TrainSummary } from "./types";

// Kept for the training-side callers that import them from here; tfjs-free code imports plan.ts / metrics.ts.
export { countParams, initialWeights, modelLayout } from "./plan";
export { anomalyAccuracy, quantile } from "./metrics";

/** Default evaluation batch: bounds activation memory (the CNN's first layer is 100 KB per sample). */
const EVAL_BATCH = 256;

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
  checkOptimizer(o.optimizer);
}

class WasmModel implements LocalModel {
  readonly spec: ModelSpec;
  readonly layout: WeightLayout;
  readonly numParams: number;
  private readonly net: Network;
  private busy = false;
  private disposed = false;
  /** The generic-path twin that runs Adam rounds (built on first use). */
  private generic: GenericModel | null = null;

  /** `spec` may be a layer graph matchPreset maps to `plan`'s preset: the layout then carries the graph's names. */
  constructor(spec: ModelSpec, plan: Plan, weights: Float32Array) {
    this.spec = spec;
    this.layout = spec.kind === "graph" ? modelLayout(spec) : makeLayout(plan.tensors);
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
      if (opts.optimizer?.name === "adam") return await this.trainGeneric(data, opts);
      return await this.runTraining(data, opts);
    } finally {
      this.busy = false;
    }
  }

  /** Optimizers the fast path does not run (Adam): the same graph on the generic path, weights copied both ways. */
  private async trainGeneric(data: Dataset, opts: TrainOptions): Promise<TrainSummary> {
    const w = this.net.save(this.layout);
    if (this.generic === null) {
      const graph = this.spec.kind === "graph" ? this.spec : presetGraph(this.spec);
      this.generic = new GenericModel(graph, w);
    } else this.generic.setWeights(w);
    const summary = await this.generic.train(data, opts);
    this.net.load(this.generic.getWeights(), this.layout);
    return summary;
  }

  private async runTraining(data: Dataset, opts: TrainOptions): Promise<TrainSummary> {
    const t0 = performance.now();
    const plan = this.net.plan;
    const n = data.n;
    const mu = opts.mu ?? 0;

    // FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): the local objective adds
    // μ/2·||w − w0||², w0 = the weights at the start of train(), whose gradient is μ(w − w0). With c = lr·μ the
    // update w − lr·(g + μ(w − w0)) is w·(1 − c) + c·w0 − lr·g; c·w0 is computed once.
    const c = opts.lr * mu;
    const prox =
      c > 0
        ? { keep: tf.scalar(1 - c), c: tf.scalar(c), anchor: this.net.params.map((p) => tf.mul(p, c)) }
        : null;
    // Heavy-ball momentum with the learning rate folded into the gradient (every gradient here is already lr·g):
    // v ← βv + lr·g, w ← w − v, which is tf.train.momentum's v ← βv + g, w ← w − lr·v for a constant lr
    // (Nesterov: w ← w − (lr·g + βv)). The velocity starts at zero each train() call, as the generic path's.
    const opt = opts.optimizer;
    const momentum =
      opt?.name === "momentum"
        ? {
            beta: tf.scalar(opt.momentum ?? 0.9),
            nesterov: opt.nesterov === true,
            v: this.net.params.map((p) => tf.zerosLike(p)),
          }
        : null;

    const kept: { t: tf.Tensor; from: number; to: number }[] = [];
    let order: Int32Array = new Int32Array(0);
    try {
      const { steps, samples } = await forEachBatch(n, opts, (epochOrder, from, to, lastEpoch) => {
        order = epochOrder;
        const metric = this.step(data, order, from, to, opts.lr, prox, momentum);
        if (lastEpoch) kept.push({ t: metric, from, to });
        else metric.dispose();
      });
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
      return { loss, accuracy, samples, steps, ms: performance.now() - t0 };
    } finally {
      tf.dispose(kept.map((k) => k.t));
      if (prox) tf.dispose([prox.keep, prox.c, ...prox.anchor]);
      if (momentum) tf.dispose([momentum.beta, ...momentum.v]);
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
    prox: { keep: tf.Scalar; c: tf.Scalar; anchor: tf.Tensor[] } | null,
    momentum: { beta: tf.Scalar; nesterov: boolean; v: tf.Tensor[] } | null,
  ): tf.Tensor {
    const net = this.net;
    const plan = net.plan;
    const old = net.params;
    // Element-wise kernels and small products on this thread; the network puts its large products on the pool.
    const result = serialKernels(() =>
      tf.tidy(() => {
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
        if (momentum) {
          // The step lr·(g + μ(w − w0)) = grads + c·w − c·w0, then the velocity.
          const velocity = old.map((p, i) => {
            const g = prox ? tf.sub(tf.add(grads[i], tf.mul(p, prox.c)), prox.anchor[i]) : grads[i];
            return tf.add(tf.mul(momentum.v[i], momentum.beta), g);
          });
          const next = old.map((p, i) => {
            if (!momentum.nesterov) return tf.sub(p, velocity[i]);
            const g = prox ? tf.sub(tf.add(grads[i], tf.mul(p, prox.c)), prox.anchor[i]) : grads[i];
            return tf.sub(p, tf.add(g, tf.mul(velocity[i], momentum.beta)));
          });
          return { next, metric, velocity };
        }
        const next = old.map((p, i) =>
          prox ? tf.sub(tf.add(tf.mul(p, prox.keep), prox.anchor[i]), grads[i]) : tf.sub(p, grads[i]),
        );
        return { next, metric, velocity: [] as tf.Tensor[] };
      }),
    );
    net.params = result.next;
    tf.dispose(old);
    if (momentum) {
      tf.dispose(momentum.v);
      momentum.v.splice(0, momentum.v.length, ...result.velocity);
    }
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
    let absSum = 0;
    for (let from = 0; from < n; from += batchSize) {
      const to = Math.min(from + batchSize, n);
      const [e, a] = tf.tidy(() => {
        const b = this.net.batch(data, idx, from, to, false);
        const diff = tf.sub(this.net.forward(b, false).outT, b.xT as tf.Tensor2D);
        return [tf.mean(tf.square(diff), 0), tf.sum(tf.abs(diff))];
      });
      errors.set(e.dataSync(), from);
      absSum += a.dataSync()[0];
      tf.dispose([e, a]);
    }
    let sum = 0;
    for (let i = 0; i < n; i++) sum += errors[i];
    // mae: mean absolute reconstruction error over all values, as the generic path reports it.
    return {
      loss: sum / n,
      accuracy: anomalyAccuracy(errors, data.y),
      n,
      mae: absSum / (n * plan.inputSize),
    };
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
    this.generic?.dispose();
  }
}

/** Which training path a model uses: the hand-written fast path or tfjs autograd (generic.ts). */
export type ModelPath = "fast" | "generic";

export interface CreateModelOptions {
  /** "auto" (default): the fast path for presets and graphs matchPreset recognises, else the generic path.
   *  "fast" / "generic" force one (tests, benchmarks); "fast" fails with E_MODEL_SPEC for a graph it cannot run. */
  readonly path?: "auto" | ModelPath;
}

/** The path createModel picks for a spec under "auto" (Adam still trains on the generic path: see WasmModel). */
export function modelPath(spec: ModelSpec): ModelPath {
  return spec.kind !== "graph" || matchPreset(spec) !== null ? "fast" : "generic";
}

/**
 * Builds a model of `spec` with the initial weights of `seed` (see initialWeights) on the wasm backend,
 * initializing the backend if needed. Presets and the graphs matchPreset recognises train on the fast path (SGD
 * and momentum; an Adam round runs on the generic path with the same weights), every other graph on the generic
 * path.
 */
export async function createModel(
  spec: ModelSpec,
  seed: number,
  opts: CreateModelOptions = {},
): Promise<LocalModel> {
  choosePath(spec, opts); // invalid specs fail before the backend starts
  await initBackend();
  return createModelSync(spec, seed, opts);
}

function choosePath(
  spec: ModelSpec,
  opts: CreateModelOptions,
): { preset: PresetSpec | null; path: ModelPath } {
  const want = opts.path ?? "auto";
  if (want !== "auto" && want !== "fast" && want !== "generic") {
    fail("E_CONFIG_MODEL", `model path must be auto, fast or generic, got ${JSON.stringify(want)}`);
  }
  let preset: PresetSpec | null;
  if (spec.kind === "graph") preset = matchPreset(spec);
  else {
    planFor(spec); // checks the preset's sizes
    preset = spec;
  }
  if (want === "fast" && preset === null) {
    fail("E_MODEL_SPEC", "the fast path does not cover this layer graph (it needs the generic path)");
  }
  return { preset, path: want === "generic" || preset === null ? "generic" : "fast" };
}

/** Same as createModel, for callers that already awaited initBackend(). */
export function createModelSync(spec: ModelSpec, seed: number, opts: CreateModelOptions = {}): LocalModel {
  const { preset, path } = choosePath(spec, opts);
  wasmBackend();
  const weights = initialWeights(spec, seed);
  if (path === "fast" && preset !== null) return new WasmModel(spec, planFor(preset), weights);
  return new GenericModel(spec.kind === "graph" ? spec : presetGraph(spec), weights);
}
