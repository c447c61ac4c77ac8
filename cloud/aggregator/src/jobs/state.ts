/**
 * Persisted job and round state (blob container `flotilla`, layout in docs/iothub-protocol.md). Every state write
 * is ETag-conditional (updateJson), so concurrent Function instances cannot lose each other's changes.
 *
 * Strategy server-optimizer state: the round's aggregation happens inside one tick, so a strategy needs the global
 * model of the previous round (`models/{round}.f32`) and its server-optimizer state beside it: FedAvgM's momentum,
 * FedAdam/FedYogi/FedAdagrad's moments are published with each model as `models/{round}.state`
 * (core/strategies/state.ts; its sha256 in the model's meta), and a restarted Function imports them, so a restart
 * changes no model. FedAvg and FedProx have no such state (no blob). A model published without its state (by an
 * older version) restarts the optimizer from zero: the round record then says `optimizerStateReset: true`.
 */
import type { DpRoundRecord, DpState } from "../../../../core/privacy/dp";
import type { RobustReport } from "../../../../core/robust/aggregation";
import type { RoundSelection, RoundState } from "../../../../core/round/engine";
import type { AsyncCounters, AsyncState } from "../../../../core/round/async-engine";
import type { SecAggParams, SecAggStep } from "../../../../core/secagg/types";
import type { DeviceEvaluation, FleetEvaluation } from "../../../../core/round/evaluation";
import type { QualityRoundRecord, QualityState } from "../../../../core/robust/quality";
import type { PolicyExclusionCounts } from "../../../../core/fleet/policy";
import { getJson, putJson, sha256Hex, updateJson, type BlobStore } from "../store/blob-store";
import type { JobDefinition } from "./job";

export type JobStatus = "created" | "running" | "stopped" | "completed" | "failed";

export interface RoundRecord {
  readonly round: number;
  readonly status: "aggregated" | "failed";
  readonly participants: number;
  readonly completed: number;
  /** Participants that delivered nothing, sent a failure frame, or whose update the strategy refused. */
  readonly failures: readonly { deviceId: string; code: string; reason: string }[];
  /**
   * Sample-weighted mean of the aggregated updates' reported training loss (null when none); from the strategy's
   * round metrics (core/strategies/metrics.ts).
   */
  readonly trainLoss: number | null;
  /** The same for their reported training accuracy (absent when none reported one). */
  readonly trainAccuracy?: number;
  readonly bytesReceived: number;
  readonly durationMs: number;
  readonly belowQuorum: boolean;
  /** sha256 of models/{round}.f32, the global model after this round. */
  readonly modelSha256: string;
  readonly optimizerStateReset: boolean;
  readonly closedAt: number;
  /**
   * Why a failed round failed, when it was not just "no update" (E_SECAGG_ABORTED; E_MODEL_DIVERGED: the global
   * model was not finite, the job failed, and `modelSha256` is then the round's input model).
   */
  readonly code?: string;
  /** Secure rounds: what the protocol did. */
  readonly secagg?: SecAggRecord;
  /** Differential privacy: clip norm, noise std, whether anything was released, and ε spent so far. */
  readonly dp?: DpRoundRecord;
  /** Updates whose sample-count claim was above its bound (jobs/samples.ts): weighed at the bound / refused. */
  readonly sampleCountClipped?: number;
  readonly sampleCountRejected?: number;
  /** Chunks of updates that never completed, deleted when the round closed. */
  readonly orphanChunksDeleted?: number;
  /** Async jobs: the flush that made this version (`round` is the version). */
  readonly async?: AsyncFlushRecord;
  /**
   * Fleet-wide evaluation of the global model this round published, on the devices' held-out data
   * (docs/evaluation.md): folded from rounds/{round}/evaluations.json each time an evaluation arrives (after
   * the round closed: the devices evaluate the model as they start the next round).
   */
  readonly evaluation?: FleetEvaluation;
  /**
   * Jobs with a robust `aggregator` (docs/robustness.md): what it did this round (core/robust/aggregation.ts
   * RobustReport: the spec, the norm bound used, per device its norm, cosine to the aggregate, clipped, kept and
   * why not).
   */
  readonly robust?: RobustReport;
  /**
   * Contribution quality (core/robust/quality.ts): the round's anomalies, the devices excluded from its selection
   * and why, and whom it excluded or readmitted.
   */
  readonly quality?: QualityRoundRecord;
  /**
   * How many devices the round's selector chose from, after every exclusion (connection, declared windows,
   * deadline fit, device policy, contribution quality, other jobs' leases). Async versions: at the last
   * ordering pass before the version's flush.
   */
  readonly candidates?: number;
  /**
   * Devices their policy left out of the round, per reason (core/fleet/policy.ts POLICY_EXCLUSIONS; reasons that
   * excluded nobody are absent, `{}`: none). Async versions: at the last ordering pass before the flush.
   */
  readonly policyExcluded?: PolicyExclusionCounts;
}

/** rounds/{r}/evaluations.json: every device's evaluation of round r's model (first one per device kept). */
export interface RoundEvaluations {
  readonly jobId: string;
  readonly round: number;
  readonly devices: Readonly<
    Record<string, DeviceEvaluation & { readonly at: number; readonly precision?: string }>
  >;
}

/** What one flush of an async job applied (core/round/async-engine.ts). */
export interface AsyncFlushRecord {
  /** Devices whose update is in this version, in buffer order, and each one's staleness τ. */
  readonly applied: readonly string[];
  readonly staleness: readonly number[];
  /** The engine's counters after the flush (ordered, applied, refusedStale, timeouts, failures, late, ...). */
  readonly counters: AsyncCounters;
}

/**
 * An async job's persisted state (jobs/{id}/async/state.json): the async engine's state, stored as it is, and
 * what the orchestrator keeps beside it.
 */
export interface AsyncJobState {
  readonly engine: AsyncState;
  /**
   * The round number of each device's last order (version + 1): a trainer never starts the same (job, round) twice
   * (E_ROUND_SEEN), so a device is not ordered again before the version moves on.
   */
  readonly lastRound: Readonly<Record<string, number>>;
  /** Devices whose quantizer twin holds the job's codec entry (lossy uplink). */
  readonly quantizers: readonly string[];
  /** The last ordering pass's candidates and policy exclusions (the next version's record carries them). */
  readonly selection?: RoundSelection;
}

/** The round record's account of a secure aggregation. */
export interface SecAggRecord {
  /** Devices lost at each step (did not answer it, or their answer was refused). */
  readonly dropouts: Readonly<Record<SecAggStep, readonly string[]>>;
  /** Devices whose update is in the sum. */
  readonly included: readonly string[];
  /** Server compute to unmask (rebuild secrets, remove masks, decode), ms; null when it never got there. */
  readonly unmaskMs: number | null;
  readonly params: SecAggParams | null;
  /** Protocol bytes per device: `up` device → cloud (frames + method answers), `down` cloud → device (requests). */
  readonly bytes: Readonly<Record<string, { readonly up: number; readonly down: number }>>;
  /** The abort, when the round was aborted. */
  readonly error?: { readonly code: string; readonly message: string };
}

export interface JobDocument {
  readonly definition: JobDefinition;
  readonly status: JobStatus;
  /** The round in progress or last finished (0 = none yet). */
  readonly currentRound: number;
  readonly rounds: readonly RoundRecord[];
  readonly layoutHash: string;
  readonly modelLength: number;
  readonly createdAt: number;
  readonly updatedAt: number;
  readonly error?: string;
  /**
   * Why a job ended before its last round: "budget-exhausted" (status `completed`) when one more round would have
   * spent more than the differential-privacy budget (`stopMessage` says how much was spent); "diverged" (status
   * `failed`) when a round's aggregated global model had NaN or Infinity values (`stopMessage` names the round;
   * that model was never published).
   */
  readonly stopReason?: "budget-exhausted" | "diverged";
  readonly stopMessage?: string;
  /** Differential-privacy jobs: fixed when the job starts, updated with every round record. */
  readonly dp?: JobDpState;
  /** Contribution quality: every device's record across rounds (QualityTracker.toJSON), with every round record. */
  readonly quality?: QualityState;
}

/** A DP job's persisted privacy state. */
export interface JobDpState {
  /** Devices the job samples from (q = clientsPerRound / fleetSize), fixed when the first round opens. */
  readonly fleetSize: number;
  /** core/privacy/dp.ts DifferentialPrivacy.exportState(): clip norm, ledger, status. */
  readonly state: DpState;
  /** Privacy spent so far (released rounds). */
  readonly spent: { readonly epsilon: number; readonly delta: number; readonly steps: number };
}

/**
 * A round's persisted state (rounds/{r}/state.json) is the round engine's state (core/round/engine.ts), stored as
 * it is: the orchestrator feeds it events and persists what the engine returns.
 */
export type {
  Participant,
  ReceivedUpdate,
  RoundState,
  SecAggReceipt,
  SecAggRoundState,
} from "../../../../core/round/engine";

export interface ModelMeta {
  readonly jobId: string;
  readonly round: number;
  readonly sha256: string;
  readonly layoutHash: string;
  readonly length: number;
  readonly createdAt: number;
  /** The same model compressed for devices (job.downlinkCompression), when the job asks for it. */
  readonly downlink?: { readonly spec: string; readonly sha256: string; readonly bytes: number };
  /** ONNX files of this model (fp32 and int8) for inference on devices. */
  readonly onnx?: {
    readonly fp32: { readonly bytes: number; readonly sha256: string };
    readonly int8: { readonly bytes: number; readonly sha256: string };
  };
  /** The strategy's server-optimizer state after this model (models/{round}.state), for stateful strategies. */
  readonly strategyState?: { readonly sha256: string; readonly bytes: number };
}

export const paths = {
  job: (jobId: string) => `jobs/${jobId}/job.json`,
  round: (jobId: string, round: number) => `jobs/${jobId}/rounds/${round}/state.json`,
  /** The job's initial model when it has one of its own (JobDefinition.initModel): raw float32. */
  initModel: (jobId: string) => `jobs/${jobId}/init.f32`,
  model: (jobId: string, round: number) => `jobs/${jobId}/models/${round}.f32`,
  modelMeta: (jobId: string, round: number) => `jobs/${jobId}/models/${round}.json`,
  modelEncoded: (jobId: string, round: number) => `jobs/${jobId}/models/${round}.flz`,
  modelState: (jobId: string, round: number) => `jobs/${jobId}/models/${round}.state`,
  modelOnnx: (jobId: string, round: number, kind: "fp32" | "int8") =>
    `jobs/${jobId}/models/${round}${kind === "int8" ? ".int8" : ""}.onnx`,
  /** Devices' evaluations of the model round r published (RoundEvaluations). */
  evaluations: (jobId: string, round: number) => `jobs/${jobId}/rounds/${round}/evaluations.json`,
  /**
   * Who was ordered to evaluate the job's last model (dispatch.ts orderFinalEvaluation, EvaluateOrderRecord): the
   * ingest accepts evaluations of that round from them only.
   */
  evaluateOrder: (jobId: string, round: number) => `jobs/${jobId}/rounds/${round}/evaluate-order.json`,
  /** What the round's dispatch leaves for the next one (cloud/aggregator/src/dispatch.ts DispatchRecord). */
  dispatch: (jobId: string, round: number) => `jobs/${jobId}/rounds/${round}/dispatch.json`,
  chunksOfRound: (jobId: string, round: number) => `jobs/${jobId}/rounds/${round}/chunks/`,
  chunkDir: (jobId: string, round: number, updateId: string) =>
    `jobs/${jobId}/rounds/${round}/chunks/${updateId}/`,
  chunk: (jobId: string, round: number, updateId: string, index: number) =>
    `jobs/${jobId}/rounds/${round}/chunks/${updateId}/${String(index).padStart(6, "0")}`,
  update: (jobId: string, round: number, deviceId: string) =>
    `jobs/${jobId}/rounds/${round}/updates/${encodeURIComponent(deviceId)}.frame`,
  /** A secure round's device message: frames (advertise, mask) `.frame`, method answers (share, unmask) `.json`. */
  secagg: (jobId: string, round: number, step: "advertise" | "share" | "mask" | "unmask", deviceId: string) =>
    `jobs/${jobId}/rounds/${round}/secagg/${step}/${encodeURIComponent(deviceId)}.${
      step === "advertise" || step === "mask" ? "frame" : "json"
    }`,
  /** An async job's state (AsyncJobState). */
  asyncState: (jobId: string) => `jobs/${jobId}/async/state.json`,
  /** An async job's update (a result frame) while it waits in the buffer, by the update-queue's update id. */
  asyncUpdate: (jobId: string, updateId: string) =>
    `jobs/${jobId}/async/updates/${encodeURIComponent(updateId)}.frame`,
  /** Step 4's requests by device, fixed when the mask step closes (a restart resends the same ones). */
  secaggUnmaskRequests: (jobId: string, round: number) =>
    `jobs/${jobId}/rounds/${round}/secagg/unmask-requests.json`,
  /** The identity public keys the round's advertisements were checked with (fixed when they close). */
  secaggIdentityKeys: (jobId: string, round: number) =>
    `jobs/${jobId}/rounds/${round}/secagg/identity-keys.json`,
};

/**
 * Told of every job document this process writes (telemetry.ts): `prev` is what the write replaced (undefined for a
 * new job). Called after the write succeeded, once per write; it must not throw (a throw is swallowed).
 */
export interface JobObserver {
  jobWritten(prev: JobDocument | undefined, next: JobDocument): void;
}

export class JobRepository {
  constructor(
    readonly store: BlobStore,
    private readonly observer?: JobObserver,
  ) {}

  private written(prev: JobDocument | undefined, next: JobDocument): void {
    try {
      this.observer?.jobWritten(prev, next);
    } catch {
      // telemetry never fails a state write
    }
  }

  async getJob(jobId: string): Promise<JobDocument | undefined> {
    return (await getJson<JobDocument>(this.store, paths.job(jobId)))?.value;
  }

  /** Creates the job; E_STORE_CONFLICT if it exists. */
  async createJob(doc: JobDocument): Promise<void> {
    await putJson(this.store, paths.job(doc.definition.jobId), doc, { ifNoneMatch: "*" });
    this.written(undefined, doc);
  }

  async updateJob(
    jobId: string,
    mutate: (cur: JobDocument) => JobDocument | undefined,
  ): Promise<JobDocument | undefined> {
    // The last attempt's input and output (updateJson retries on a conflicting write).
    let prev: JobDocument | undefined;
    let next: JobDocument | undefined;
    const out = await updateJson<JobDocument>(this.store, paths.job(jobId), (cur) => {
      prev = cur;
      next = cur ? mutate(cur) : undefined;
      return next;
    });
    if (next !== undefined && out === next) this.written(prev, next);
    return out;
  }

  async listJobIds(): Promise<string[]> {
    const names = await this.store.list("jobs/");
    return names.filter((n) => /^jobs\/[^/]+\/job\.json$/.test(n)).map((n) => n.split("/")[1]);
  }

  async getRound(jobId: string, round: number): Promise<RoundState | undefined> {
    return (await getJson<RoundState>(this.store, paths.round(jobId, round)))?.value;
  }

  /** Creates the round state; returns false when it already exists (another instance opened it). */
  async createRound(state: RoundState): Promise<boolean> {
    try {
      await putJson(this.store, paths.round(state.jobId, state.round), state, { ifNoneMatch: "*" });
      return true;
    } catch (e) {
      if ((e as { code?: string }).code === "E_STORE_CONFLICT") return false;
      throw e;
    }
  }

  updateRound(
    jobId: string,
    round: number,
    mutate: (cur: RoundState) => RoundState | undefined,
  ): Promise<RoundState | undefined> {
    return updateJson<RoundState>(this.store, paths.round(jobId, round), (cur) =>
      cur ? mutate(cur) : undefined,
    );
  }

  async getEvaluations(jobId: string, round: number): Promise<RoundEvaluations | undefined> {
    return (await getJson<RoundEvaluations>(this.store, paths.evaluations(jobId, round)))?.value;
  }

  /** ETag-conditional update of a round's evaluations (created when missing; undefined from `mutate`: no write). */
  updateEvaluations(
    jobId: string,
    round: number,
    mutate: (cur: RoundEvaluations) => RoundEvaluations | undefined,
  ): Promise<RoundEvaluations | undefined> {
    return updateJson<RoundEvaluations>(this.store, paths.evaluations(jobId, round), (cur) =>
      mutate(cur ?? { jobId, round, devices: {} }),
    );
  }

  async getAsync(jobId: string): Promise<AsyncJobState | undefined> {
    return (await getJson<AsyncJobState>(this.store, paths.asyncState(jobId)))?.value;
  }

  /** Creates an async job's state; false when it exists already (another instance created it). */
  async createAsync(jobId: string, state: AsyncJobState): Promise<boolean> {
    try {
      await putJson(this.store, paths.asyncState(jobId), state, { ifNoneMatch: "*" });
      return true;
    } catch (e) {
      if ((e as { code?: string }).code === "E_STORE_CONFLICT") return false;
      throw e;
    }
  }

  /** ETag-conditional update of an async job's state (undefined from `mutate`: no write). */
  updateAsync(
    jobId: string,
    mutate: (cur: AsyncJobState) => AsyncJobState | undefined,
  ): Promise<AsyncJobState | undefined> {
    return updateJson<AsyncJobState>(this.store, paths.asyncState(jobId), (cur) =>
      cur ? mutate(cur) : undefined,
    );
  }

  async getModelMeta(jobId: string, round: number): Promise<ModelMeta | undefined> {
    return (await getJson<ModelMeta>(this.store, paths.modelMeta(jobId, round)))?.value;
  }

  /** Reads a model blob as float32 (copy, aligned). */
  async getModel(
    jobId: string,
    round: number,
  ): Promise<{ weights: Float32Array; sha256: string } | undefined> {
    const b = await this.store.get(paths.model(jobId, round));
    if (!b) return undefined;
    const copy = Uint8Array.from(b.bytes);
    return { weights: new Float32Array(copy.buffer, 0, copy.byteLength / 4), sha256: sha256Hex(copy) };
  }
}
