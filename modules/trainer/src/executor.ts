import { loadDirectory } from "../../../core/data/dirloader";
import { sampleSize, type Dataset } from "../../../core/data/dataset";
import { checkDataTask } from "../../../core/data/task";
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
  { readonly kind: "dir"; readonly dir: string } | { readonly kind: "dataset"; readonly dataset: Dataset };

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
}

export interface TrainOutcome {
  /** trained − global, in the global model's layout. */
  readonly delta: Float32Array;
  readonly numSamples: number;
  readonly metrics: { readonly loss: number; readonly accuracy: number; readonly trainMs: number };
  /** DP with adaptive clipping: the noised centred clip indicator (job.dp.clipBitNoiseStd was set). */
  readonly dpClipBit?: number;
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
  const data = ref.kind === "dir" ? loadDirectory(ref.dir, { inputShape: spec.inputShape }) : ref.dataset;
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

  async run(
    job: TrainJob,
    signal: AbortSignal,
    onProgress: (samplesDone: number, samplesTotal: number) => void,
  ): Promise<TrainOutcome> {
    if (signal.aborted) throw new FlotillaError("E_ABORTED", "training was aborted");
    const data = resolveData(job.data, job.spec);
    const model = await createModel(job.spec, job.config.seed);
    try {
      const runtime = new DeviceRuntime(job.deviceId, data, withAbort(model, signal), (_d, done, total) =>
        onProgress(done, total),
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
      return {
        delta: answer.delta.slice(),
        numSamples: answer.numSamples,
        metrics: answer.metrics,
        ...(answer.dpClipBit !== undefined ? { dpClipBit: answer.dpClipBit } : {}),
      };
    } finally {
      model.dispose();
    }
  }
}

/** The model with `abortSignal` added to every train() call. */
function withAbort(model: LocalModel, signal: AbortSignal): LocalModel {
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
    train: (data, opts: TrainOptions) => model.train(data, { ...opts, abortSignal: signal }),
    evaluate: (data, batchSize) => model.evaluate(data, batchSize),
    ...(model.localState ? { localState: () => model.localState?.() ?? null } : {}),
    ...(model.restoreLocalState
      ? { restoreLocalState: (w: Float32Array) => model.restoreLocalState?.(w) }
      : {}),
    dispose: () => model.dispose(),
  };
}
