/**
 * Persisted job and round state (blob container `flotilla`, layout in docs/iothub-protocol.md). Every state write
 * is ETag-conditional (updateJson), so concurrent Function instances cannot lose each other's changes.
 *
 * Strategy server-optimizer state: the round's aggregation happens inside one tick, so a strategy only needs the
 * global model of the previous round, which is persisted (`models/{round}.f32`). FedAvg and FedProx have no other
 * state. FedAvgM's momentum and FedAdam/FedYogi/FedAdagrad's moments are kept in memory by the orchestrator
 * between rounds; the strategies do not expose them, so after a process restart they restart from zero (the
 * round record says `optimizerStateReset: true`). The model itself is never lost.
 */
import type { FitConfig } from "../../../../core/strategies/strategy";
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
  /** Sample-weighted mean of the devices' reported training loss (null when none). */
  readonly trainLoss: number | null;
  readonly bytesReceived: number;
  readonly durationMs: number;
  readonly belowQuorum: boolean;
  /** sha256 of models/{round}.f32, the global model after this round. */
  readonly modelSha256: string;
  readonly optimizerStateReset: boolean;
  readonly closedAt: number;
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
}

export interface Participant {
  readonly deviceId: string;
  readonly config: FitConfig;
}

export interface ReceivedUpdate {
  readonly updateId: string;
  readonly kind: "result" | "failure";
  readonly bytes: number;
  readonly numSamples?: number;
  readonly loss?: number;
  readonly code?: string;
  readonly reason?: string;
  readonly at: number;
}

export interface RoundState {
  readonly jobId: string;
  readonly round: number;
  /** open: collecting; closing: aggregation began over `received` as frozen then; closed: done. */
  readonly status: "open" | "closing" | "closed";
  readonly participants: readonly Participant[];
  readonly received: Readonly<Record<string, ReceivedUpdate>>;
  readonly openedAt: number;
  readonly deadline: number;
  /** sha256 of the model the round trains from (models/{round-1}.f32). */
  readonly modelSha256: string;
  /** True once every participant's twin was configured and startRound attempted. */
  readonly dispatched: boolean;
}

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
}

export const paths = {
  job: (jobId: string) => `jobs/${jobId}/job.json`,
  round: (jobId: string, round: number) => `jobs/${jobId}/rounds/${round}/state.json`,
  model: (jobId: string, round: number) => `jobs/${jobId}/models/${round}.f32`,
  modelMeta: (jobId: string, round: number) => `jobs/${jobId}/models/${round}.json`,
  modelEncoded: (jobId: string, round: number) => `jobs/${jobId}/models/${round}.flz`,
  modelOnnx: (jobId: string, round: number, kind: "fp32" | "int8") =>
    `jobs/${jobId}/models/${round}${kind === "int8" ? ".int8" : ""}.onnx`,
  chunkDir: (jobId: string, round: number, updateId: string) =>
    `jobs/${jobId}/rounds/${round}/chunks/${updateId}/`,
  chunk: (jobId: string, round: number, updateId: string, index: number) =>
    `jobs/${jobId}/rounds/${round}/chunks/${updateId}/${String(index).padStart(6, "0")}`,
  update: (jobId: string, round: number, deviceId: string) =>
    `jobs/${jobId}/rounds/${round}/updates/${encodeURIComponent(deviceId)}.frame`,
};

export class JobRepository {
  constructor(readonly store: BlobStore) {}

  async getJob(jobId: string): Promise<JobDocument | undefined> {
    return (await getJson<JobDocument>(this.store, paths.job(jobId)))?.value;
  }

  /** Creates the job; E_STORE_CONFLICT if it exists. */
  async createJob(doc: JobDocument): Promise<void> {
    await putJson(this.store, paths.job(doc.definition.jobId), doc, { ifNoneMatch: "*" });
  }

  updateJob(
    jobId: string,
    mutate: (cur: JobDocument) => JobDocument | undefined,
  ): Promise<JobDocument | undefined> {
    return updateJson<JobDocument>(this.store, paths.job(jobId), (cur) => (cur ? mutate(cur) : undefined));
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
