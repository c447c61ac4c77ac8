/**
 * Inference on an exported ONNX model (onnx.ts) with onnxruntime-node (CPU execution provider).
 *
 * The model must have one input of shape [N, ...sample] (N symbolic or any): float32, or int32/int64 token ids
 * (an Embedding model; the float samples given to predict/evaluate are converted) and one float32 output, whose
 * name (onnx.ts) says the task: `reconstruction` an autoencoder (evaluated by reconstruction error),
 * `probability` a binary classifier's P(label 1) [N, 1] (threshold 0.5), `prediction` a regression (mean squared
 * and absolute error against Dataset.targets), any other a classifier's class scores [N, classes] (argmax).
 * Samples are run in batches (default 256) so memory stays bounded; every error is a FlotillaError E_ONNX_LOAD or
 * E_ONNX_RUN with a one-line message.
 *
 * This module does not load TensorFlow.js (devices that only run inference need not).
 */
import * as ort from "onnxruntime-node";
import type { Dataset } from "../data/dataset";
import { FlotillaError, fail } from "../errors";
import { PREDICTION, PROBABILITY, RECONSTRUCTION } from "./onnx-schema";

export interface OnnxLoadOptions {
  /** onnxruntime intra-op threads (default: onnxruntime's choice, one per physical core). */
  readonly threads?: number;
}

export interface OnnxPredictOptions {
  /** Samples per session run (default 256). */
  readonly batchSize?: number;
}

export interface OnnxEvaluation {
  /**
   * Classifiers: argmax accuracy; binary: accuracy of p > 0.5; autoencoder: anomaly-detection accuracy (label 0 =
   * normal, see models.ts); regression: NaN.
   */
  readonly accuracy: number;
  /**
   * Classifiers: mean cross-entropy −log p_y; binary: mean binary cross-entropy; autoencoder: mean reconstruction
   * error; regression: mean squared error.
   */
  readonly loss: number;
  readonly n: number;
  /** Regression: mean absolute error. */
  readonly mae?: number;
  /** Classifiers: argmax class per sample; binary: 1 when p > 0.5. */
  readonly predictions?: Int32Array;
  /** Autoencoder: mean squared reconstruction error per sample. */
  readonly errors?: Float32Array;
}

const DEFAULT_BATCH = 256;

type InputType = "float32" | "int32" | "int64";
const INPUT_TYPES: readonly InputType[] = ["float32", "int32", "int64"];

/** The session input of float samples: as they are, or ids truncated to integers (as Keras's cast). */
function inputTensor(type: InputType, x: Float32Array, dims: number[]): ort.Tensor {
  if (type === "int32") return new ort.Tensor("int32", Int32Array.from(x, Math.trunc), dims);
  if (type === "int64")
    return new ort.Tensor(
      "int64",
      BigInt64Array.from(x, (v) => BigInt(Math.trunc(v))),
      dims,
    );
  return new ort.Tensor("float32", x, dims);
}

/** First line of an error's message, bounded, so CLI and log output stays one line. */
function oneLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const line = msg.split("\n").find((l) => l.trim() !== "") ?? "unknown error";
  return line.length > 300 ? `${line.slice(0, 300)}…` : line.trim();
}

/**
 * Anomaly-detection accuracy, the rule of models.ts `anomalyAccuracy` (kept here so inference needs no tfjs; a
 * test checks both agree): label 0 = normal; a sample is an anomaly iff its error exceeds the 95th percentile
 * (linear interpolation) of the normal samples' errors. NaN without normal samples.
 */
export function anomalyAccuracy(errors: ArrayLike<number>, labels: ArrayLike<number>): number {
  const normal: number[] = [];
  for (let i = 0; i < labels.length; i++) if (labels[i] === 0) normal.push(errors[i]);
  if (normal.length === 0) return NaN;
  const a = Float64Array.from(normal).sort();
  const pos = (a.length - 1) * 0.95;
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, a.length - 1);
  const threshold = a[lo] + (a[hi] - a[lo]) * (pos - lo);
  let correct = 0;
  for (let i = 0; i < labels.length; i++) if (errors[i] > threshold === (labels[i] !== 0)) correct++;
  return correct / labels.length;
}

export class OnnxModel {
  private session: ort.InferenceSession | null;
  /** Per-sample input shape (without the batch axis). */
  readonly inputShape: readonly number[];
  readonly inputSize: number;
  readonly inputName: string;
  readonly outputName: string;
  /** From the output's name (onnx.ts): "reconstruction", "binary", "regression", else "classifier". */
  readonly task: "classifier" | "binary" | "regression" | "reconstruction";
  /** The input's element type: float32, or int32/int64 token ids. */
  readonly inputType: InputType;

  private constructor(
    session: ort.InferenceSession,
    inputShape: number[],
    outputName: string,
    inputType: InputType,
  ) {
    this.session = session;
    this.inputShape = inputShape;
    this.inputSize = inputShape.reduce((a, b) => a * b, 1);
    this.inputName = session.inputNames[0];
    this.outputName = outputName;
    this.inputType = inputType;
    this.task =
      outputName === RECONSTRUCTION
        ? "reconstruction"
        : outputName === PROBABILITY
          ? "binary"
          : outputName === PREDICTION
            ? "regression"
            : "classifier";
  }

  /** Creates an onnxruntime session for the model bytes. Rejects with E_ONNX_LOAD. */
  static async load(bytes: Uint8Array, opts: OnnxLoadOptions = {}): Promise<OnnxModel> {
    if (!(bytes instanceof Uint8Array) || bytes.byteLength === 0) {
      fail("E_ONNX_LOAD", "the ONNX model is empty");
    }
    const threads = opts.threads;
    if (threads !== undefined && (!Number.isInteger(threads) || threads < 0)) {
      fail("E_ONNX_LOAD", `threads must be an integer >= 0, got ${threads}`);
    }
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(bytes, {
        executionProviders: ["cpu"],
        graphOptimizationLevel: "all",
        executionMode: "sequential",
        interOpNumThreads: 1,
        ...(threads !== undefined ? { intraOpNumThreads: threads } : {}),
        logSeverityLevel: 3,
      });
    } catch (e) {
      return fail("E_ONNX_LOAD", `cannot load the ONNX model: ${oneLine(e)}`, { cause: e });
    }
    const close = () => session.release().catch(() => undefined);
    if (session.inputNames.length !== 1 || session.outputNames.length !== 1) {
      await close();
      fail(
        "E_ONNX_LOAD",
        `the ONNX model must have one input and one output, it has ${session.inputNames.length} and ${session.outputNames.length}`,
      );
    }
    const meta = session.inputMetadata?.[0];
    const dims = meta && meta.isTensor ? meta.shape.slice(1) : [];
    if (
      !meta ||
      !meta.isTensor ||
      !INPUT_TYPES.includes(meta.type as InputType) ||
      dims.some((d) => typeof d !== "number" || d < 1)
    ) {
      await close();
      fail(
        "E_ONNX_LOAD",
        "the ONNX model's input must be float32 (or int32/int64 ids) [N, ...] with fixed sample dimensions",
      );
    }
    return new OnnxModel(session, dims as number[], session.outputNames[0], meta.type as InputType);
  }

  private live(what: string): ort.InferenceSession {
    if (this.session === null) fail("E_ONNX_RUN", `${what}: the ONNX model was closed`);
    return this.session;
  }

  /**
   * The model's output for n samples x (n × inputSize values, row-major): [n, width] row-major, width the
   * output size per sample. Rejects with E_ONNX_RUN.
   */
  async predict(x: Float32Array, n: number, opts: OnnxPredictOptions = {}): Promise<Float32Array> {
    const session = this.live("predict");
    if (!Number.isInteger(n) || n < 0) fail("E_ONNX_RUN", `predict: n must be an integer >= 0, got ${n}`);
    if (!(x instanceof Float32Array) || x.length !== n * this.inputSize) {
      fail(
        "E_ONNX_RUN",
        `predict: expected ${n} samples of ${this.inputSize} values, got ${x?.length} values`,
      );
    }
    const bs = opts.batchSize ?? DEFAULT_BATCH;
    if (!Number.isInteger(bs) || bs < 1) fail("E_ONNX_RUN", `predict: batchSize must be a positive integer`);
    let out: Float32Array | null = null;
    let width = 0;
    for (let from = 0; from < n; from += bs) {
      const to = Math.min(from + bs, n);
      const input = inputTensor(this.inputType, x.subarray(from * this.inputSize, to * this.inputSize), [
        to - from,
        ...this.inputShape,
      ]);
      let result: ort.InferenceSession.ReturnType;
      try {
        result = await session.run({ [this.inputName]: input });
      } catch (e) {
        return fail("E_ONNX_RUN", `onnxruntime run failed: ${oneLine(e)}`, { cause: e });
      }
      const t = result[this.outputName];
      if (!t || t.type !== "float32") fail("E_ONNX_RUN", `the ONNX model's output is not float32`);
      const data = t.data as Float32Array;
      if (out === null) {
        width = data.length / (to - from);
        out = new Float32Array(n * width);
      }
      if (data.length !== (to - from) * width) fail("E_ONNX_RUN", "the ONNX model's output size changed");
      out.set(data, from * width);
      t.dispose();
    }
    return out ?? new Float32Array(0);
  }

  /**
   * Classifiers: argmax accuracy, mean cross-entropy of the output probabilities, predictions. Autoencoder:
   * per-sample reconstruction error, their mean as loss, anomaly-detection accuracy (label 0 = normal; NaN
   * without normal samples). Rejects with E_ONNX_RUN.
   */
  async evaluate(ds: Dataset, opts: OnnxPredictOptions = {}): Promise<OnnxEvaluation> {
    this.live("evaluate");
    const size = ds.inputShape.reduce((a, b) => a * b, 1);
    if (size !== this.inputSize) {
      fail(
        "E_ONNX_RUN",
        `evaluate: the model takes samples of ${this.inputSize} values, the data has [${ds.inputShape}]`,
      );
    }
    const n = ds.n;
    if (n === 0) return { accuracy: NaN, loss: NaN, n: 0 };
    const out = await this.predict(ds.x.subarray(0, n * size), n, opts);
    const width = out.length / n;
    if (this.task === "reconstruction") {
      if (width !== size)
        fail("E_ONNX_RUN", `evaluate: reconstruction has ${width} values per sample, not ${size}`);
      const errors = new Float32Array(n);
      let sum = 0;
      for (let i = 0; i < n; i++) {
        let s = 0;
        for (let j = 0; j < size; j++) s += (out[i * size + j] - ds.x[i * size + j]) ** 2;
        errors[i] = s / size;
        sum += errors[i];
      }
      return { accuracy: anomalyAccuracy(errors, ds.y), loss: sum / n, n, errors };
    }
    if (this.task === "regression") {
      const t = ds.targets;
      if (!t || t.length !== out.length) {
        fail(
          "E_ONNX_RUN",
          `evaluate: the model predicts ${width} values per sample, the data has no such targets`,
        );
      }
      let se = 0;
      let ae = 0;
      for (let i = 0; i < out.length; i++) {
        se += (out[i] - t[i]) ** 2;
        ae += Math.abs(out[i] - t[i]);
      }
      return { accuracy: NaN, loss: se / out.length, mae: ae / out.length, n };
    }
    if (this.task === "binary") {
      if (width !== 1) fail("E_ONNX_RUN", `evaluate: a binary model has 1 output per sample, not ${width}`);
      const predictions = new Int32Array(n);
      let correct = 0;
      let bce = 0;
      for (let i = 0; i < n; i++) {
        const p = out[i];
        predictions[i] = p > 0.5 ? 1 : 0;
        const y = ds.y[i] !== 0 ? 1 : 0;
        if (predictions[i] === y) correct++;
        bce += -Math.log(Math.max(y === 1 ? p : 1 - p, 1e-30));
      }
      return { accuracy: correct / n, loss: bce / n, n, predictions };
    }
    const predictions = new Int32Array(n);
    let correct = 0;
    let ce = 0;
    for (let i = 0; i < n; i++) {
      const o = i * width;
      let best = 0;
      for (let k = 1; k < width; k++) if (out[o + k] > out[o + best]) best = k;
      predictions[i] = best;
      const y = ds.y[i];
      if (best === y) correct++;
      ce += -Math.log(Math.max(y >= 0 && y < width ? out[o + y] : 0, 1e-30));
    }
    return { accuracy: correct / n, loss: ce / n, n, predictions };
  }

  /** Releases the onnxruntime session; later calls reject with E_ONNX_RUN. Idempotent. */
  async close(): Promise<void> {
    const s = this.session;
    this.session = null;
    if (s) {
      try {
        await s.release();
      } catch (e) {
        throw new FlotillaError("E_ONNX_RUN", `cannot release the ONNX session: ${oneLine(e)}`, { cause: e });
      }
    }
  }
}
