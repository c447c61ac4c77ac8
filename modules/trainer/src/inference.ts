import { createHash } from "node:crypto";
import type { Dataset } from "../../../core/data/dataset";
import { sampleSize } from "../../../core/data/dataset";
import { FlotillaError, fail } from "../../../core/errors";
import { OnnxModel } from "../../../core/export/onnx-runtime";
import type { ModelSpec } from "../../../core/engine/model-spec";
import type { RoundOrder } from "../../../core/protocol/round-order";

/**
 * On-device inference with onnxruntime-node on the published ONNX global model: TensorFlow.js is needed only for
 * training. Each round order names the ONNX files of the model the round starts from; the trainer keeps the
 * newest one loaded, evaluates it on the local data after the round (reported as `flotilla.inference`), and
 * serves the `predict` direct method with it.
 */

export type InferencePrecision = "int8" | "fp32";

/** The reported `inference` object. */
export interface InferenceReport {
  readonly jobId: string;
  /** The global model's round (the round order's round − 1). */
  readonly modelRound: number;
  readonly precision: InferencePrecision;
  /** Accuracy of the global model on this device's local data (classifiers; anomaly accuracy for autoencoders). */
  readonly accuracy: number;
  /** Mean absolute error (regression graphs), when the model has one. */
  readonly mae?: number;
  readonly n: number;
  readonly msPerSample: number;
  readonly updatedAt: string;
}

export interface PredictAnswer {
  readonly jobId: string;
  readonly modelRound: number;
  readonly precision: InferencePrecision;
  /** argmax class per input (classifiers; binary: p > 0.5) */
  readonly classes?: number[];
  /** per input: class probabilities (binary: [P(label 1)]), predictions (regression), or the reconstruction error
   *  (autoencoder, reconstruction graphs) */
  readonly outputs: number[][] | number[];
}

interface Loaded {
  readonly jobId: string;
  readonly modelRound: number;
  readonly sha256: string;
  readonly spec: ModelSpec;
  readonly model: OnnxModel;
}

/** Most inputs one `predict` call takes. */
export const MAX_PREDICT_INPUTS = 1024;

export class TrainerInference {
  private loaded: Loaded | undefined;
  private loading: Promise<void> = Promise.resolve();

  constructor(
    private readonly precision: InferencePrecision,
    private readonly fetchBytes: (url: string) => Promise<Uint8Array>,
    /** Told the duration of each inference call (metrics: ./metrics.ts onnx_inference_seconds). */
    private readonly timed: (kind: "evaluate" | "predict", seconds: number) => void = () => undefined,
  ) {}

  get current(): { jobId: string; modelRound: number; sha256: string } | undefined {
    const l = this.loaded;
    return l ? { jobId: l.jobId, modelRound: l.modelRound, sha256: l.sha256 } : undefined;
  }

  /** Loads the round order's ONNX model (if it names one and it is not loaded yet). */
  async update(order: Pick<RoundOrder, "jobId" | "round" | "onnx" | "modelSpec">): Promise<boolean> {
    const ref = order.onnx;
    if (!ref) return false;
    const int8 = this.precision === "int8" && ref.int8Url && ref.int8Sha256;
    const url = int8 ? ref.int8Url! : ref.url;
    const sha = int8 ? ref.int8Sha256! : ref.sha256;
    if (this.loaded?.sha256 === sha) return false;
    const next = this.loading.then(async () => {
      if (this.loaded?.sha256 === sha) return;
      const bytes = await this.fetchBytes(url);
      const got = createHash("sha256").update(bytes).digest("hex");
      if (got !== sha) fail("E_ONNX_HASH", `ONNX model has sha256 ${got}, the round order says ${sha}`);
      const model = await OnnxModel.load(bytes, { threads: 1 });
      const old = this.loaded;
      this.loaded = {
        jobId: order.jobId,
        modelRound: order.round - 1,
        sha256: sha,
        spec: order.modelSpec,
        model,
      };
      if (old) await old.model.close().catch(() => undefined);
    });
    this.loading = next.catch(() => undefined);
    await next;
    return true;
  }

  /** Evaluates the loaded model on the local data. */
  async evaluate(data: Dataset): Promise<InferenceReport | undefined> {
    const l = this.loaded;
    if (!l) return undefined;
    const t0 = performance.now();
    const r = await l.model.evaluate(data);
    const ms = performance.now() - t0;
    this.timed("evaluate", ms / 1000);
    return {
      jobId: l.jobId,
      modelRound: l.modelRound,
      precision: this.precision,
      accuracy: r.accuracy,
      ...(r.mae !== undefined && Number.isFinite(r.mae) ? { mae: r.mae } : {}),
      n: r.n,
      msPerSample: r.n > 0 ? ms / r.n : 0,
      updatedAt: new Date().toISOString(),
    };
  }

  /**
   * Evaluates the loaded model on held-out data (fleet-wide evaluation, docs/evaluation.md): the model's job and
   * round, the sample count and the metrics its task has (accuracy of classifiers and autoencoders, the mean
   * loss, MAE of regressions; NaN ones left out).
   */
  async evaluateHeldOut(data: Dataset): Promise<
    | {
        readonly jobId: string;
        readonly modelRound: number;
        readonly precision: InferencePrecision;
        readonly samples: number;
        readonly accuracy?: number;
        readonly loss?: number;
        readonly mae?: number;
      }
    | undefined
  > {
    const l = this.loaded;
    if (!l) return undefined;
    const r = await l.model.evaluate(data);
    const finite = (k: "accuracy" | "loss" | "mae", v: number | undefined) =>
      v !== undefined && Number.isFinite(v) ? { [k]: v } : {};
    return {
      jobId: l.jobId,
      modelRound: l.modelRound,
      precision: this.precision,
      samples: r.n,
      ...finite("accuracy", r.accuracy),
      ...finite("loss", r.loss),
      ...finite("mae", r.mae),
    };
  }

  /** The `predict` method: `{ inputs: number[][] }`, each row one sample of the model's input size. */
  async predict(payload: unknown): Promise<PredictAnswer> {
    const l = this.loaded;
    if (!l)
      throw new FlotillaError("E_PREDICT_NO_MODEL", "no ONNX model has been published to this device yet");
    const inputs = (payload as { inputs?: unknown } | null)?.inputs;
    if (!Array.isArray(inputs) || inputs.length === 0 || inputs.length > MAX_PREDICT_INPUTS) {
      fail("E_PREDICT_INPUT", `inputs must be an array of 1 to ${MAX_PREDICT_INPUTS} samples`);
    }
    const size = sampleSize(l.spec.inputShape);
    const x = new Float32Array(inputs.length * size);
    inputs.forEach((row: unknown, i) => {
      if (!Array.isArray(row) || row.length !== size)
        fail("E_PREDICT_INPUT", `inputs[${i}] must be an array of ${size} numbers`);
      for (let j = 0; j < size; j++) {
        const v = row[j] as unknown;
        if (typeof v !== "number" || !Number.isFinite(v))
          fail("E_PREDICT_INPUT", `inputs[${i}][${j}] is not a finite number`);
        x[i * size + j] = v;
      }
    });
    const t0 = performance.now();
    const out = await l.model.predict(x, inputs.length);
    this.timed("predict", (performance.now() - t0) / 1000);
    const width = out.length / inputs.length;
    const base = { jobId: l.jobId, modelRound: l.modelRound, precision: this.precision };
    // The task is the ONNX output's (onnx-runtime.ts): an autoencoder preset and a reconstruction graph alike.
    if (l.model.task === "reconstruction") {
      // Reconstruction error per sample (mean squared), the anomaly score.
      const errors: number[] = [];
      for (let i = 0; i < inputs.length; i++) {
        let s = 0;
        for (let j = 0; j < size; j++) s += (out[i * width + j] - x[i * size + j]) ** 2;
        errors.push(s / size);
      }
      return { ...base, outputs: errors };
    }
    const classes: number[] = [];
    const outputs: number[][] = [];
    for (let i = 0; i < inputs.length; i++) {
      const row = Array.from(out.subarray(i * width, (i + 1) * width));
      let best = 0;
      for (let j = 1; j < width; j++) if (row[j] > row[best]) best = j;
      // A binary model's one output is P(label 1).
      classes.push(l.model.task === "binary" ? (row[0] > 0.5 ? 1 : 0) : best);
      outputs.push(row);
    }
    // A regression's outputs are its predictions, no classes.
    if (l.model.task === "regression") return { ...base, outputs };
    return { ...base, classes, outputs };
  }

  async close(): Promise<void> {
    await this.loading;
    const l = this.loaded;
    this.loaded = undefined;
    if (l) await l.model.close().catch(() => undefined);
  }
}
