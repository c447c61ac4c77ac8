/** Test helpers for the aggregator: Azurite as a child process, a recording Fleet, devices' chunked frames. */
import { createHash } from "node:crypto";
import { encodeMessage, type DeviceMessage } from "../../../core/protocol/messages";
import type {
  Fleet,
  MethodOutcome,
  RoundDesired,
  TrainerInfo,
  QuantizerLayout,
  QualityTag,
} from "../../../cloud/aggregator/src/fleet/fleet";
import type { IngestEvent } from "../../../cloud/aggregator/src/ingest";
import type { EvaluateOrder } from "../../../core/protocol/round-order";
import { DEFAULT_POLICY, type DevicePolicy } from "../../../core/fleet/policy";

export { freePort, startAzurite, type Azurite } from "../../../local/stack/azurite";
import { evaluate, parseCondition, resolveIn } from "../../../local/hub/query";
import type { JsonObject } from "../../../local/hub/twin";

/** A trainer as a test sets it up: its policy may be left out (the default policy). */
export type TestTrainer = Omit<TrainerInfo, "policy"> & { readonly policy?: DevicePolicy };

/** Test trainers as a Fleet lists them (the default policy where none is set). */
export const asTrainers = (ts: readonly TestTrainer[]): TrainerInfo[] =>
  ts.map((t) => ({ ...t, policy: t.policy ?? DEFAULT_POLICY }));

/** A Fleet that records every call; the test plays the devices. */
export class RecordingFleet implements Fleet {
  trainers: TestTrainer[] = [];
  readonly configured: { deviceId: string; desired: RoundDesired | null }[] = [];
  /**
   * Round orders sent, in order: the trainer twin writes that name a round (dispatch.ts sends one order per device,
   * through the twin; the trainer starts on it, so the `startRound` method is no longer called).
   */
  get started(): { deviceId: string; payload: RoundDesired }[] {
    return this.configured.flatMap((c) => (c.desired ? [{ deviceId: c.deviceId, payload: c.desired }] : []));
  }
  /** `startRound` method calls (none from dispatch.ts). */
  readonly startCalls: { deviceId: string; payload: RoundDesired }[] = [];
  readonly acks: { deviceId: string; updateIds: string[] }[] = [];
  readonly openRounds: { deviceId: string; jobId: string; round: number | null }[] = [];
  /** Devices that are not connected: every call to them fails. */
  readonly offline = new Set<string>();
  /** Whether a connected device's module takes a method call (startRound, abortRound, ack); default: it does. */
  accepts: (deviceId: string, moduleId: string, method: string, payload: unknown) => boolean = () => true;

  /** The cohort conditions listTrainers was asked for, in order (undefined: every trainer). */
  readonly cohorts: (string | undefined)[] = [];
  /** Like IotHubFleet: with a cohort, the trainers whose device twin ({deviceId, tags}) matches the condition. */
  async listTrainers(cohort?: string): Promise<TrainerInfo[]> {
    this.cohorts.push(cohort);
    const where = cohort === undefined ? undefined : parseCondition(cohort);
    return this.trainers
      .filter(
        (t) =>
          !where ||
          evaluate(where, (p) =>
            resolveIn({ deviceId: t.deviceId, tags: (t.tags ?? {}) as JsonObject }, p),
          ) === true,
      )
      .map((t) => ({ ...t, policy: t.policy ?? DEFAULT_POLICY }));
  }
  async configureRound(deviceId: string, desired: RoundDesired | null): Promise<void> {
    this.configured.push({ deviceId, desired });
  }
  /** Evaluate-only orders written (trainer twin's desired `flotillaEvaluate`), in order. */
  readonly evaluateOrders: { deviceId: string; order: EvaluateOrder | null }[] = [];
  async configureEvaluation(deviceId: string, order: EvaluateOrder | null): Promise<void> {
    this.evaluateOrders.push({ deviceId, order });
  }
  async startRound(deviceId: string, payload: RoundDesired): Promise<boolean> {
    this.startCalls.push({ deviceId, payload });
    return !this.offline.has(deviceId) && this.accepts(deviceId, "trainer", "startRound", payload);
  }
  readonly aborted: { deviceId: string; jobId: string; round: number }[] = [];
  async abortRound(deviceId: string, jobId: string, round: number): Promise<boolean> {
    this.aborted.push({ deviceId, jobId, round });
    return !this.offline.has(deviceId) && this.accepts(deviceId, "trainer", "abortRound", { jobId, round });
  }
  async ack(deviceId: string, updateIds: readonly string[]): Promise<boolean> {
    this.acks.push({ deviceId, updateIds: [...updateIds] });
    return (
      !this.offline.has(deviceId) &&
      this.accepts(deviceId, "update-queue", "ack", { updateIds: [...updateIds] })
    );
  }
  async setOpenRound(deviceId: string, jobId: string, round: number | null): Promise<void> {
    this.openRounds.push({ deviceId, jobId, round });
  }
  /** Quality tags written (tags.flotilla.quality; null: removed), in order. */
  readonly qualityTags: { deviceId: string; jobId: string; tag: QualityTag | null }[] = [];
  async setQualityTag(deviceId: string, jobId: string, tag: QualityTag | null): Promise<void> {
    this.qualityTags.push({ deviceId, jobId, tag });
  }
  readonly quantizers: {
    deviceId: string;
    jobId: string;
    compression: string | null;
    layout?: QuantizerLayout;
  }[] = [];
  /** Profiler twin writes: the job models set (configureProfiler), in order. */
  readonly profilers: { deviceId: string; modelKey: string; spec: unknown }[] = [];
  async configureProfiler(deviceId: string, modelKey: string, spec: unknown): Promise<void> {
    this.profilers.push({ deviceId, modelKey, spec });
  }
  async configureQuantizer(
    deviceId: string,
    jobId: string,
    compression: string | null,
    layout?: QuantizerLayout,
  ): Promise<void> {
    this.quantizers.push({ deviceId, jobId, compression, ...(layout ? { layout } : {}) });
  }
  /** Trainer direct methods called (secure aggregation), in order. */
  readonly calls: { deviceId: string; method: string; payload: unknown; timeoutSeconds: number }[] = [];
  /** Answers trainer methods; default: not reachable. */
  onCall: (deviceId: string, method: string, payload: unknown) => Promise<MethodOutcome> | MethodOutcome =
    () => ({
      reached: false,
      reason: "no device in this test",
    });
  async callTrainer(
    deviceId: string,
    method: string,
    payload: unknown,
    timeoutSeconds: number,
  ): Promise<MethodOutcome> {
    this.calls.push({ deviceId, method, payload, timeoutSeconds });
    return this.onCall(deviceId, method, payload);
  }
}

export const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** A device's frame cut into D2C events the way the update-queue outbox sends them. */
export function chunkEvents(
  msg: DeviceMessage,
  opts: { maxChunkBytes?: number; sender?: string; chunkSha?: boolean } = {},
): { events: IngestEvent[]; updateId: string; frame: Uint8Array } {
  const frame = encodeMessage(msg);
  const max = opts.maxChunkBytes ?? 255_000;
  const hash = sha256(frame);
  const updateId = hash.slice(0, 32);
  const count = Math.max(1, Math.ceil(frame.byteLength / max));
  const events: IngestEvent[] = [];
  for (let i = 0; i < count; i++) {
    const body = Buffer.from(frame.subarray(i * max, Math.min(frame.byteLength, (i + 1) * max)));
    events.push({
      body,
      properties: {
        jobId: msg.jobId,
        round: String(msg.round),
        deviceId: msg.deviceId,
        updateId,
        chunkIndex: String(i),
        chunkCount: String(count),
        size: String(frame.byteLength),
        sha256: hash,
        ...(opts.chunkSha === false ? {} : { chunkSha256: sha256(body) }),
        "flotilla-content-type": "flotilla-frame",
      },
      systemProperties: {
        "iothub-connection-device-id": opts.sender ?? msg.deviceId,
        "iothub-connection-module-id": "update-queue",
        "message-id": `${updateId}:${i}`,
      },
    });
  }
  return { events, updateId, frame };
}

export const logs: string[] = [];
export const testLog = (l: string) => {
  logs.push(l);
};

import { HttpRequest, InvocationContext } from "@azure/functions";
import { createAggregator, type Aggregator } from "../../../cloud/aggregator/src/aggregator";
import { MemoryBlobStore, type BlobStore } from "../../../cloud/aggregator/src/store/blob-store";
import type { IdentityKeyDirectory } from "../../../cloud/aggregator/src/services";

export const SPEC = { kind: "mlp", inputShape: [4], numClasses: 3, hidden: [5] } as const;

export function jobBody(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    jobId: "job-1",
    modelSpec: SPEC,
    strategy: "fedavg",
    strategyOptions: { clientsPerRound: 3, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    rounds: 3,
    roundDeadlineSeconds: 60,
    minCompletedFraction: 0.6,
    seed: 1,
    ...over,
  };
}

export function ctx(): InvocationContext {
  return new InvocationContext({ functionName: "test", invocationId: "t", logHandler: () => {} });
}

export function post(url: string, body?: unknown, params: Record<string, string> = {}): HttpRequest {
  return new HttpRequest({
    method: "POST",
    url: `http://localhost${url}`,
    params,
    ...(body === undefined
      ? {}
      : { body: { string: typeof body === "string" ? body : JSON.stringify(body) } }),
  });
}

export function get(url: string, params: Record<string, string> = {}): HttpRequest {
  return new HttpRequest({ method: "GET", url: `http://localhost${url}`, params });
}

export interface World {
  store: BlobStore;
  fleet: RecordingFleet;
  agg: Aggregator;
  now: { t: number };
  logs: string[];
  /** A fresh aggregator over the same store and fleet (a restarted Function instance). */
  restart(): Aggregator;
}

export function world(
  devices = ["dev-a", "dev-b", "dev-c"],
  extra: { identityKeys?: IdentityKeyDirectory; robustMaxBytes?: number } = {},
): World {
  const store = new MemoryBlobStore();
  const fleet = new RecordingFleet();
  fleet.trainers = devices.map((deviceId) => ({ deviceId, connected: true, numSamples: 100 }));
  const now = { t: 1_700_000_000_000 };
  const logs: string[] = [];
  // These tests drive the timer by hand: no tick after ingest.
  const make = () =>
    createAggregator(
      { store, fleet, clock: () => now.t, log: (l) => logs.push(l), ...extra },
      { tickAfterIngest: false },
    );
  const w: World = {
    store,
    fleet,
    agg: make(),
    now,
    logs,
    restart() {
      w.agg = make();
      return w.agg;
    },
  };
  return w;
}

/** Creates and starts a job through the HTTP API. */
export async function startJob(w: World, over: Record<string, unknown> = {}): Promise<string> {
  const body = jobBody(over);
  const r = await w.agg.http.createJob(post("/api/jobs", body), ctx());
  if (r.status !== 201) throw new Error(`create failed: ${JSON.stringify(r.jsonBody)}`);
  const id = String(body.jobId);
  const s = await w.agg.http.startJob(post(`/api/jobs/${id}/start`, undefined, { id }), ctx());
  if (s.status !== 200) throw new Error(`start failed: ${JSON.stringify(s.jsonBody)}`);
  return id;
}

/** Deterministic pseudo-random delta. */
/** A connected trainer with 100 samples whose device twin is tagged `flotilla.line = line` (cohort tests). */
export const lineTrainer = (deviceId: string, line: string): TestTrainer => ({
  deviceId,
  connected: true,
  numSamples: 100,
  tags: { flotilla: { line } },
});

export function makeDelta(n: number, seed: number): Float32Array {
  const d = new Float32Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    d[i] = (x / 2 ** 32 - 0.5) * 0.2;
  }
  return d;
}

export function shuffle<T>(a: T[], seed: number): T[] {
  const out = a.slice();
  let x = seed;
  for (let i = out.length - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const j = x % (i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}
