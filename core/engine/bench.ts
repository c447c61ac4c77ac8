/**
 * Local training throughput: samples per second of LocalModel.train on synthetic data of the model's usual shape
 * (mlp, autoencoder: [784]; cnn: [28, 28, 1]; 10 classes; cnn1d: [64, 6] sensor windows, 5 classes). Used by
 * `flotilla bench train` and the device profiler.
 *
 * Method: a warm-up of doubling runs (3, 6, 12, ... steps) for ~25% of the time budget lets V8 optimize tfjs's JS
 * and grows the wasm heap; the rate of its last run sizes REPS equal timed runs that fill the rest of the budget;
 * the result is the median of their rates (robust to a noisy, shared machine). The clock covers everything
 * train() does per run: batch assembly, the SGD steps and the end-of-run metric read-back.
 */
import { fail } from "../errors";
import { makeDataset } from "../data/dataset";
import type { Dataset } from "../data/dataset";
import { Rng } from "../data/rng";
import { BENCH_SHAPES, defaultSpec, MODEL_KINDS, validateSpec, type ModelSpec } from "./model-spec";

export { BENCH_SHAPES };
import { backendThreads, initBackend } from "./backend";
import { createModel, modelPath, type CreateModelOptions, type ModelPath } from "./models";
import { analyzeGraph } from "./graph";

export interface BenchTrainOptions {
  /** The model kind (its default spec is benchmarked), or the label of `spec`. */
  readonly model: string;
  /**
   * A full model spec to benchmark instead of the kind's default (a job's own model: hidden sizes, filters), on
   * synthetic data of its input shape and classes.
   */
  readonly spec?: ModelSpec;
  readonly batchSize: number;
  /** Total time budget in seconds (default 5; at least a few steps always run). */
  readonly seconds?: number;
  readonly seed?: number;
  /**
   * Threads of the wasm backend (default: defaultThreads()). Only takes effect when this call starts the backend
   * (once per isolate); the result's `threads` says what was measured.
   */
  readonly threads?: number;
  /** Training path: "auto" (default, what createModel picks), or force the fast or the generic path. */
  readonly path?: CreateModelOptions["path"];
}

export interface BenchTrainResult {
  readonly model: string;
  readonly batchSize: number;
  readonly params: number;
  /** Median over the timed repetitions. */
  readonly samplesPerSecond: number;
  /** Rate of every timed repetition, in run order. */
  readonly repetitions?: readonly number[];
  /** The backend's XNNPACK threads during the measurement. */
  readonly threads?: number;
  /** The training path that ran. */
  readonly path?: ModelPath;
}

const REPS = 5;
/** Synthetic samples generated (runs that need more samples run several epochs over them). */
const MAX_SAMPLES = 4000;

function syntheticData(
  inputShape: readonly number[],
  numClasses: number,
  n: number,
  seed: number,
  spec?: ModelSpec,
): Dataset {
  const size = inputShape.reduce((a, b) => a * b, 1);
  const rng = new Rng(seed);
  // A layer graph's data: token ids for an Embedding, 0/1 labels for binary, targets for regression.
  const info = spec?.kind === "graph" ? analyzeGraph(spec) : null;
  const emb = info?.layers.find((l) => l.layer.type === "Embedding")?.layer;
  const tokens = emb?.type === "Embedding" ? emb.inputDim : 0;
  const classes = info?.spec.task === "binary" ? 2 : numClasses;
  const x = new Float32Array(n * size);
  for (let i = 0; i < x.length; i++) x[i] = tokens > 0 ? rng.int(tokens) : rng.next();
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) y[i] = rng.int(classes);
  const ds = makeDataset(x, y, inputShape, classes);
  if (info?.spec.task !== "regression") return ds;
  const k = info.spec.numClasses;
  const targets = new Float32Array(n * k);
  for (let i = 0; i < targets.length; i++) targets[i] = rng.next();
  return { ...ds, targets, targetSize: k };
}

function median(a: readonly number[]): number {
  const s = [...a].sort((p, q) => p - q);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export async function benchTrain(opts: BenchTrainOptions): Promise<BenchTrainResult> {
  const given = opts.spec === undefined ? undefined : validateSpec(opts.spec);
  const shape: readonly [readonly number[], number] | undefined = given
    ? [given.inputShape, Math.max(2, given.numClasses)]
    : BENCH_SHAPES[opts.model];
  if (shape === undefined) {
    fail("E_CONFIG_MODEL", `unknown model '${opts.model}' (expected one of ${MODEL_KINDS.join(", ")})`);
  }
  if (!Number.isInteger(opts.batchSize) || opts.batchSize < 1) {
    fail("E_CONFIG_BENCH", `batch size must be a positive integer, got ${opts.batchSize}`);
  }
  const seconds = opts.seconds ?? 5;
  if (!(seconds > 0) || !Number.isFinite(seconds))
    fail("E_CONFIG_BENCH", `seconds must be > 0, got ${seconds}`);
  const seed = opts.seed ?? 1;
  const bs = opts.batchSize;
  const [inputShape, numClasses] = shape;
  const spec = given ?? defaultSpec(opts.model, inputShape, numClasses);
  await initBackend({ threads: opts.threads });
  const model = await createModel(spec, seed, { path: opts.path });
  try {
    const train = async (data: Dataset, epochs: number): Promise<number> => {
      const s = await model.train(data, { epochs, batchSize: bs, lr: 0.01, seed });
      return s.samples / (s.ms / 1000);
    };
    const size = inputShape.reduce((p, q) => p * q, 1);
    const data = syntheticData(
      inputShape,
      numClasses,
      Math.max(bs, MAX_SAMPLES - (MAX_SAMPLES % bs)),
      seed,
      spec,
    );
    const firstSamples = (m: number): Dataset => {
      const k = data.targetSize ?? 0;
      const head = makeDataset(
        data.x.subarray(0, m * size),
        data.y.subarray(0, m),
        inputShape,
        data.numClasses,
      );
      return data.targets ? { ...head, targets: data.targets.subarray(0, m * k), targetSize: k } : head;
    };
    const run = (samples: number): Promise<number> => {
      const m = Math.min(samples, data.n);
      return train(firstSamples(m), Math.max(1, Math.round(samples / m)));
    };
    // Warm-up (~25% of the budget, not counted): runs of 3, 6, 12, ... steps (the last one trimmed to the time
    // left). tfjs's JS needs some thousands of ops before V8 has optimized it; the last rate sizes the timed runs.
    const warmEnd = performance.now() + seconds * 250;
    let steps = 3;
    let rate = await run(steps * bs);
    for (let left = warmEnd - performance.now(); left > 0; left = warmEnd - performance.now()) {
      steps = Math.max(1, Math.min(2 * steps, Math.round(((left / 1000) * rate) / bs)));
      rate = await run(steps * bs);
    }
    // REPS equal timed runs fill the remaining ~75% of the budget.
    const repSamples = Math.max(bs, Math.round((rate * seconds * 0.75) / REPS / bs) * bs);
    const repetitions: number[] = [];
    for (let r = 0; r < REPS; r++) repetitions.push(await run(repSamples));
    return {
      model: opts.model,
      batchSize: bs,
      params: model.numParams,
      samplesPerSecond: median(repetitions),
      repetitions,
      threads: backendThreads(),
      path: opts.path === "fast" || opts.path === "generic" ? opts.path : modelPath(spec),
    };
  } finally {
    model.dispose();
  }
}
