import { loadDirectory } from "../../../core/data/dirloader";
import { sampleSize, type Dataset } from "../../../core/data/dataset";
import { checkDataTask } from "../../../core/data/task";
import type { DataSchema } from "../../../core/data/data-schema";
import { createModel } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import type { LocalModel, TrainOptions } from "../../../core/engine/types";
import { FlotillaError, fail } from "../../../core/errors";
import { decodeMessage, encodeMessage, type DpOrder } from "../../../core/protocol/messages";
import { DeviceRuntime } from "../../../core/round/device";
import type { FitConfig } from "../../../core/strategies/strategy";

/**
 * Where local training runs. The trainer module hands a TrainJob to an executor; by default training runs
 * in-process on the wasm backend (InProcessTrainExecutor). A local fleet launcher running many trainers in one
 * process can pass an executor backed by a worker-thread pool: everything in a TrainJob is structured-cloneable
 * (the weights can be transferred), and the data is referred to by directory unless a dataset was injected.
 */
export type DataRef =
  | {
      readonly kind: "dir";
      readonly dir: string;
      /**
       * The data schema (the trainer's `dataSchema` property): a schema file path or the schema object; absent =
       * the directory's own schema.json, if any (core/data/dirloader.ts).
       */
      readonly schema?: string | Readonly<Record<string, unknown>>;
    }
  | { readonly kind: "dataset"; readonly dataset: Dataset };

export interface TrainJob {
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
  readonly spec: ModelSpec;
  /** The global weights (raw float32 of the model blob). */
  readonly weights: Float32Array;
  /** sha256 hex of the weights' bytes (checked again by DeviceRuntime). */
  readonly modelSha256: string;
  readonly layoutHash: string;
  /** epochs, batchSize, lr, seed and FedProx `mu` (honoured by LocalModel.train). */
  readonly config: FitConfig;
  readonly data: DataRef;
  /** Differential privacy: clip the delta and add noise before it leaves (the round order's `dp`). */
  readonly dp?: DpOrder;
  /** Norm bound on the device (the round order's `normBound`: secure rounds of a `norm:C+mean` job). */
  readonly normBound?: number;
  /**
   * The cap on local training time (the trainer's `maxTrainingMinutes`), ms: training stops after the batch during
   * which it is reached, and the update of the steps done is sent (TrainOutcome.stopped). Absent/0: no cap.
   */
  readonly maxTrainMs?: number;
}

export interface TrainOutcome {
  /** trained − global, in the global model's layout. */
  readonly delta: Float32Array;
  readonly numSamples: number;
  readonly metrics: { readonly loss: number; readonly accuracy: number; readonly trainMs: number };
  /** DP with adaptive clipping: the noised centred clip indicator (job.dp.clipBitNoiseStd was set). */
  readonly dpClipBit?: number;
  /**
   * Training stopped at the job's maxTrainMs before its last batch: the samples and steps it did of the planned
   * total. `numSamples` is then the distinct samples trained on (at most the local dataset's size).
   */
  readonly stopped?: {
    readonly samplesDone: number;
    readonly samplesPlanned: number;
    readonly steps: number;
  };
}

export interface TrainExecutor {
  /**
   * Trains and resolves with the delta; rejects with a FlotillaError (code E_DATA_*, E_MODEL_*, E_ABORTED, ...)
   * on failure. Must stop soon after `signal` aborts (rejecting). `onProgress` is called with samples done/total.
   */
  run(
    job: TrainJob,
    signal: AbortSignal,
    onProgress: (samplesDone: number, samplesTotal: number) => void,
  ): Promise<TrainOutcome>;
}

/**
 * Loads the job's data (a directory: with its schema.json when there is one, docs/data.md) and checks it fits the
 * model: E_DATA_* on any problem.
 */
export function resolveData(ref: DataRef, spec: ModelSpec): Dataset {
  const data =
    ref.kind === "dir"
      ? loadDirectory(ref.dir, {
          inputShape: spec.inputShape,
          ...(ref.schema !== undefined ? { schema: ref.schema as string | DataSchema } : {}),
        })
      : ref.dataset;
  if (data.n === 0) fail("E_DATA_NOT_FOUND", "the local dataset has no samples");
  if (sampleSize(data.inputShape) !== sampleSize(spec.inputShape)) {
    fail(
      "E_DATA_SHAPE",
      `local samples have shape [${data.inputShape}], the model expects [${spec.inputShape}]`,
    );
  }
  // Labels are classes for classifiers (graph tasks classification and binary); a regression needs targets.
  const labelled =
    spec.kind === "graph"
      ? spec.task === "classification" || spec.task === "binary"
      : spec.kind !== "autoencoder";
  if (
    spec.kind === "graph" &&
    spec.task === "regression" &&
    (!data.targets || data.targetSize !== spec.numClasses)
  )
    fail(
      "E_DATA_SHAPE",
      `the model is a regression of ${spec.numClasses} targets, the local data has ${data.targetSize ?? "no"} targets`,
    );
  if (labelled) {
    for (let i = 0; i < data.n; i++) {
      if (data.y[i] < 0 || data.y[i] >= spec.numClasses) {
        fail("E_DATA_LABEL", `local label ${data.y[i]} is outside the model's ${spec.numClasses} classes`);
      }
    }
  }
  checkDataTask(data, spec);
  return data;
}

/**
 * Trains in this thread through core/round/DeviceRuntime — the same code as the simulation's devices: the job
 * becomes a FLT1 train request, DeviceRuntime checks layout and weights hash, trains from the global weights and
 * answers with a result or failure frame, which is decoded back here. The abort signal reaches LocalModel.train
 * (checked before every batch) through a thin wrapper around the model.
 */
export class InProcessTrainExecutor implements TrainExecutor {
  /**
   * Each job's device state between rounds (DeviceRuntime.exportState): under BN policy "local" (FedBN) the
   * device's own BatchNormalization weights. Held in memory: a restarted module starts its BN from the global model.
   */
  private readonly states = new Map<string, Uint8Array>();

  /** `now`: the clock the training-time cap reads (ms; tests inject one). */
  constructor(private readonly now: () => number = () => performance.now()) {}

  async run(
    job: TrainJob,
    signal: AbortSignal,
    onProgress: (samplesDone: number, samplesTotal: number) => void,
  ): Promise<TrainOutcome> {
    if (signal.aborted) throw new FlotillaError("E_ABORTED", "training was aborted");
    const data = resolveData(job.data, job.spec);
    const model = await createModel(job.spec, job.config.seed);
    try {
      const cap = new TrainingCap(job.maxTrainMs ?? 0, this.now);
      const runtime = new DeviceRuntime(
        job.deviceId,
        data,
        withAbort(model, signal, cap),
        (_d, done, total) => onProgress(done, total),
      );
      const frame = encodeMessage({
        type: "train",
        jobId: job.jobId,
        round: job.round,
        modelHash: job.modelSha256,
        layoutHash: job.layoutHash,
        config: job.config,
        deadline: 0,
        weights: job.weights,
        ...(job.dp ? { dp: job.dp } : {}),
        ...(job.normBound !== undefined ? { normBound: job.normBound } : {}),
      });
      runtime.importState(this.states.get(job.jobId));
      const answer = decodeMessage(await runtime.handle(frame));
      const state = runtime.exportState();
      if (state) this.states.set(job.jobId, state);
      if (answer.type === "failure") throw new FlotillaError(answer.code, answer.reason);
      if (answer.type !== "result")
        throw new FlotillaError("E_DEVICE_INTERNAL", `unexpected '${answer.type}'`);
      if (!(answer.delta instanceof Float32Array))
        throw new FlotillaError("E_DEVICE_INTERNAL", "the runtime compressed an update it was not asked to");
      const stopped = cap.stopped();
      return {
        delta: answer.delta.slice(),
        // Stopped early: the update weighs the distinct samples it was trained on, not the whole dataset.
        numSamples: stopped
          ? Math.max(1, Math.min(answer.numSamples, stopped.samplesDone))
          : answer.numSamples,
        metrics: answer.metrics,
        ...(answer.dpClipBit !== undefined ? { dpClipBit: answer.dpClipBit } : {}),
        ...(stopped ? { stopped } : {}),
      };
    } finally {
      model.dispose();
    }
  }
}

/**
 * The training-time cap of one job: its clock starts when training starts, and after each batch (the progress
 * callback) the stop signal fires once `maxMs` have passed; core/engine/batches.ts then ends training after that
 * batch (at least one batch always runs).
 */
class TrainingCap {
  private readonly controller = new AbortController();
  private t0 = 0;
  private summary: { samples: number; steps: number; planned: number } | undefined;
  constructor(
    private readonly maxMs: number,
    private readonly now: () => number,
  ) {}
  /** The options of one train() call, with the cap's stop signal and clock. */
  options(opts: TrainOptions, n: number): TrainOptions {
    if (!(this.maxMs > 0)) return opts;
    this.t0 = this.now();
    this.summary = { samples: 0, steps: 0, planned: n * opts.epochs };
    return {
      ...opts,
      stopSignal: this.controller.signal,
      onProgress: (done, total) => {
        opts.onProgress?.(done, total);
        if (!this.controller.signal.aborted && this.now() - this.t0 >= this.maxMs) this.controller.abort();
      },
    };
  }
  trained(summary: { samples: number; steps: number }): void {
    if (this.summary) this.summary = { ...this.summary, samples: summary.samples, steps: summary.steps };
  }
  /** Did training stop at the cap before its planned end? */
  stopped(): TrainOutcome["stopped"] {
    const s = this.summary;
    if (!s || !this.controller.signal.aborted || s.samples >= s.planned) return undefined;
    return { samplesDone: s.samples, samplesPlanned: s.planned, steps: s.steps };
  }
}

/** The model with `abortSignal` (and the training-time cap) added to every train() call. */
function withAbort(model: LocalModel, signal: AbortSignal, cap: TrainingCap): LocalModel {
  return {
    get spec() {
      return model.spec;
    },
    get layout() {
      return model.layout;
    },
    get numParams() {
      return model.numParams;
    },
    getWeights: () => model.getWeights(),
    setWeights: (w) => model.setWeights(w),
    train: async (data, opts: TrainOptions) => {
      const summary = await model.train(data, { ...cap.options(opts, data.n), abortSignal: signal });
      cap.trained(summary);
      return summary;
    },
    evaluate: (data, batchSize) => model.evaluate(data, batchSize),
    ...(model.localState ? { localState: () => model.localState?.() ?? null } : {}),
    ...(model.restoreLocalState
      ? { restoreLocalState: (w: Float32Array) => model.restoreLocalState?.(w) }
      : {}),
    dispose: () => model.dispose(),
  };
}
