/**
 * The fleet as the orchestration sees it: who can train, and the four calls of the wire contract
 * (docs/iothub-protocol.md) — the `trainer` twin's desired `flotilla`, the `startRound` method, the update-queue's
 * `ack` method and its desired `openRounds`.
 *
 * IotHubFleet speaks to IoT Hub with the real azure-iothub service SDK (Registry for twins and queries, Client for
 * direct methods). Method failures (device offline → 404, timeout → 504) are not errors here: the twin still
 * carries the round, and the update-queue resends until acknowledged.
 */
import { Client, Registry } from "azure-iothub";

export const TRAINER_MODULE = "trainer";
export const UPDATE_QUEUE_MODULE = "update-queue";
export const PROFILER_MODULE = "profiler";
export const QUANTIZER_MODULE = "quantizer";
/** The trainer twin's desired property holding an evaluate-only order (docs/iothub-protocol.md). */
export const EVALUATE_DESIRED_KEY = "flotillaEvaluate";

import type { EvaluateOrder, RoundOrder, SecAggOrder } from "../../../../core/protocol/round-order";

import type { ModelSpec } from "../../../../core/engine/model-spec";
import { effectivePolicy, type DevicePolicy } from "../../../../core/fleet/policy";
/** The trainer's desired `flotilla` (also the `startRound` payload). */
export type RoundDesired = RoundOrder;
export type { SecAggOrder };

/** A trainer's answer to a direct method, or why the hub could not deliver it (offline: 404, timeout: 504). */
export type MethodOutcome =
  | { readonly reached: true; readonly status: number; readonly payload: unknown }
  | { readonly reached: false; readonly reason: string };

export interface TrainerInfo {
  readonly deviceId: string;
  /** The trainer module's connection state. */
  readonly connected: boolean;
  /** From the trainer's reported `flotilla.numSamples`. */
  readonly numSamples?: number;
  /** The trainer's reported `flotilla.status`. */
  readonly status?: string;
  /** From the profiler's reported `capabilities.samplesPerSecond` (by model key). */
  readonly samplesPerSecond?: Readonly<Record<string, number>>;
  /** The profiler's other reported capabilities (modules/profiler/src/profiler.ts), each when reported. */
  readonly memoryBytes?: number;
  readonly freeMemoryBytes?: number;
  readonly freeDiskBytes?: number;
  readonly rttMs?: number;
  readonly uplinkBytesPerSecond?: number;
  /** Fraction of the time the profiler has been connected (0..1). */
  readonly availability?: number;
  /** When the profiler measured them (ISO time). */
  readonly measuredAt?: string;
  /** The device twin's tags (cohort queries and operator hints), when it has any. */
  readonly tags?: Readonly<Record<string, unknown>>;
  /**
   * The device's policy as the cloud honours it (core/fleet/policy.ts effectivePolicy over the trainer's and the
   * update-queue's module twins: an operator's valid desired value at once, else the module's acknowledged value,
   * else the default; DEFAULT_POLICY when nothing is set). Selection never orders a device its policy excludes.
   */
  readonly policy: DevicePolicy;
}

/** The profiler's reported `capabilities` in TrainerInfo's terms: only well-formed figures are kept. */
export function capabilitiesOf(
  reported: unknown,
): Omit<TrainerInfo, "deviceId" | "connected" | "numSamples" | "status" | "tags" | "policy"> {
  if (typeof reported !== "object" || reported === null || Array.isArray(reported)) return {};
  const c = reported as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  const sps = c.samplesPerSecond;
  if (sps && typeof sps === "object" && !Array.isArray(sps)) {
    const clean: Record<string, number> = {};
    for (const [k, v] of Object.entries(sps as Record<string, unknown>)) {
      if (typeof v === "number" && Number.isFinite(v) && v > 0) clean[k] = v;
    }
    out.samplesPerSecond = clean;
  }
  const figure = (k: string, max = Number.MAX_SAFE_INTEGER) => {
    const v = c[k];
    if (typeof v === "number" && Number.isFinite(v) && v >= 0 && v <= max) out[k] = v;
  };
  figure("memoryBytes");
  figure("freeMemoryBytes");
  figure("freeDiskBytes");
  figure("rttMs");
  figure("uplinkBytesPerSecond");
  figure("availability", 1);
  if (typeof c.measuredAt === "string" && c.measuredAt.length <= 64) out.measuredAt = c.measuredAt;
  return out;
}

/**
 * The device twin's `tags.flotilla.quality` while a job excludes the device (contribution quality,
 * core/robust/quality.ts): the cloud cannot write reported properties, so the reason goes in a tag the portal and
 * twin queries show (e.g. a cohort `NOT IS_DEFINED(tags.flotilla.quality)`).
 */
export interface QualityTag {
  readonly status: "excluded";
  readonly reason: string;
  readonly job: string;
  /** The round whose anomalies excluded it. */
  readonly round: number;
  /** The first round it is excluded from. */
  readonly since: number;
  /** The last round it is excluded from (null: the rest of the job). */
  readonly until: number | null;
}

/** A job's weight layout as the quantizer needs it: its hash and tensor sizes (core/round/update-pipeline.ts). */
export interface QuantizerLayout {
  readonly layoutHash: string;
  readonly segments: readonly number[];
}

export interface Fleet {
  /**
   * Every trainer identity with what its modules reported and its device twin's tags; with `cohort` (a twin
   * condition, jobs/job.ts), only the devices whose device twin matches it.
   */
  listTrainers(cohort?: string): Promise<TrainerInfo[]>;
  /** Replaces the trainer's desired `flotilla` (null = idle). */
  configureRound(deviceId: string, desired: RoundDesired | null): Promise<void>;
  /**
   * Replaces the trainer's desired `flotillaEvaluate`: an evaluate-only order (core/protocol/round-order.ts
   * EvaluateOrder; null = none). The round order `flotilla` is left as it is.
   */
  configureEvaluation(deviceId: string, order: EvaluateOrder | null): Promise<void>;
  /**
   * Calls `startRound`; false (not thrown) when the device did not take it (offline, timeout, error status). The
   * round dispatch no longer calls it (dispatch.ts: the trainer twin is the one order); kept for operators.
   */
  startRound(deviceId: string, payload: RoundDesired): Promise<boolean>;
  /**
   * Calls the trainer's `abortRound` `{jobId, round}` (a stopped job); false (not thrown) when it did not get
   * through or the trainer had nothing of that round to abort (404).
   */
  abortRound(deviceId: string, jobId: string, round: number): Promise<boolean>;
  /** Calls `ack` on the update-queue; false when it did not get through. */
  ack(deviceId: string, updateIds: readonly string[]): Promise<boolean>;
  /**
   * Sets the profiler's desired `jobModels[modelKey]`: the job's model spec, which the profiler benchmarks and
   * reports as `capabilities.samplesPerSecond[modelKey]` (null removes it).
   */
  configureProfiler(deviceId: string, modelKey: string, spec: ModelSpec | null): Promise<void>;
  /** Sets the update-queue's desired `openRounds[jobId]` (null removes it). */
  setOpenRound(deviceId: string, jobId: string, round: number | null): Promise<void>;
  /**
   * Sets the quantizer's desired `flotilla.jobs[jobId]` (its codec for the job and the job's weight layout, whose
   * tensor sizes per-tensor codecs need; null removes the job).
   */
  configureQuantizer(
    deviceId: string,
    jobId: string,
    compression: string | null,
    layout?: QuantizerLayout,
  ): Promise<void>;
  /**
   * Writes the device twin's `tags.flotilla.quality` (a device excluded by `tag.job`), or with null removes it —
   * only while it still names `jobId` (another job's exclusion is left alone).
   */
  setQualityTag(deviceId: string, jobId: string, tag: QualityTag | null): Promise<void>;
  /**
   * Calls a trainer direct method (secure aggregation: secaggShareKeys, secaggMaskInput, secaggUnmask) and
   * returns the device's answer whatever its status; never throws.
   */
  callTrainer(
    deviceId: string,
    methodName: string,
    payload: unknown,
    timeoutSeconds: number,
  ): Promise<MethodOutcome>;
}

interface TwinDoc {
  deviceId?: string;
  moduleId?: string;
  connectionState?: string;
  properties?: { reported?: Record<string, unknown>; desired?: Record<string, unknown> };
}

export interface IotHubFleetOptions {
  /** Direct method response timeout (default 10 s). */
  readonly methodTimeoutSeconds?: number;
  /** Log sink for non-fatal failures. */
  readonly log?: (line: string) => void;
}

/**
 * Keys of a model spec (preset or layer graph) and of an on-device optimizer, as null: a twin's desired properties
 * are JSON merge patches (objects merge, arrays and values replace), so a round order clears what an earlier job's
 * spec or optimizer set (a stale graph `output` or an Adam `beta1` under momentum would change the next job).
 */
const STALE_SPEC_KEYS = {
  hidden: null,
  filters: null,
  kernelSize: null,
  dense: null,
  name: null,
  inputDtype: null,
  layers: null,
  output: null,
  loss: null,
  task: null,
  bnPolicy: null,
} as const;
const STALE_OPTIMIZER_KEYS = {
  momentum: null,
  nesterov: null,
  beta1: null,
  beta2: null,
  epsilon: null,
} as const;

export class IotHubFleet implements Fleet {
  private readonly timeout: number;
  private readonly log: (line: string) => void;

  constructor(
    readonly registry: Registry,
    readonly client: Client,
    opts: IotHubFleetOptions = {},
  ) {
    this.timeout = opts.methodTimeoutSeconds ?? 10;
    this.log = opts.log ?? (() => {});
  }

  /** Production: both SDK objects from the service connection string (policy with registry read/write + service connect). */
  static fromConnectionString(cs: string, opts?: IotHubFleetOptions): IotHubFleet {
    return new IotHubFleet(Registry.fromConnectionString(cs), Client.fromConnectionString(cs), opts);
  }

  private async query(sql: string): Promise<TwinDoc[]> {
    const q = this.registry.createQuery(sql, 100);
    const out: TwinDoc[] = [];
    do {
      // The token must be passed: the SDK's promise form `next()` without one asks for the first page again, and
      // with more results than one page (100) the loop never ended (listTrainers hung at 200 devices).
      const page = await q.next(q.continuationToken);
      out.push(...((page.result as TwinDoc[]) ?? []));
    } while (q.hasMoreResults);
    return out;
  }

  /**
   * Four queries (each paged), one per kind of twin, never one twin read per device: the device twins
   * (`SELECT deviceId, tags FROM devices`, `WHERE (<cohort>)` when given: IoT Hub evaluates the cohort condition),
   * the trainer module twins, the profiler module twins and the update-queue module twins; a trainer is listed
   * when its device is among the device twins. The trainer's and update-queue's desired and reported properties
   * give the device's policy (core/fleet/policy.ts effectivePolicy). (IoT Hub does not join devices with
   * devices.modules, so the join is done here; one query over all trainers costs fewer query units than
   * `deviceId IN [...]` batches.)
   */
  async listTrainers(cohort?: string): Promise<TrainerInfo[]> {
    const where = cohort === undefined ? "" : ` WHERE (${cohort})`;
    const [devices, trainers, profilers, queues] = await Promise.all([
      this.query(`SELECT deviceId, tags FROM devices${where}`),
      this.query(`SELECT * FROM devices.modules WHERE moduleId = '${TRAINER_MODULE}'`),
      this.query(`SELECT * FROM devices.modules WHERE moduleId = '${PROFILER_MODULE}'`),
      this.query(`SELECT * FROM devices.modules WHERE moduleId = '${UPDATE_QUEUE_MODULE}'`),
    ]);
    const queueTwins = new Map<string, TwinDoc["properties"]>();
    for (const q of queues) if (q.deviceId) queueTwins.set(q.deviceId, q.properties);
    const tags = new Map<string, Record<string, unknown> | undefined>();
    for (const d of devices) {
      if (!d.deviceId) continue;
      const t = (d as { tags?: unknown }).tags;
      const ok = t && typeof t === "object" && !Array.isArray(t) && Object.keys(t).length > 0;
      tags.set(d.deviceId, ok ? (t as Record<string, unknown>) : undefined);
    }
    const caps = new Map<string, ReturnType<typeof capabilitiesOf>>();
    for (const p of profilers) {
      if (p.deviceId) caps.set(p.deviceId, capabilitiesOf(p.properties?.reported?.capabilities));
    }
    const out: TrainerInfo[] = [];
    for (const t of trainers) {
      if (!t.deviceId || !tags.has(t.deviceId)) continue;
      const rep = t.properties?.reported?.flotilla as { numSamples?: unknown; status?: unknown } | undefined;
      const n = rep?.numSamples;
      const { samplesPerSecond, ...rest } = caps.get(t.deviceId) ?? {};
      const tagged = tags.get(t.deviceId);
      out.push({
        deviceId: t.deviceId,
        connected: t.connectionState === "Connected",
        numSamples: typeof n === "number" && n > 0 ? n : undefined,
        status: typeof rep?.status === "string" ? rep.status : undefined,
        samplesPerSecond,
        ...rest,
        ...(tagged ? { tags: tagged } : {}),
        policy: effectivePolicy(
          { trainer: t.properties?.desired, "update-queue": queueTwins.get(t.deviceId)?.desired },
          { trainer: t.properties?.reported, "update-queue": queueTwins.get(t.deviceId)?.reported },
        ).policy,
      });
    }
    return out.sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0));
  }

  async configureRound(deviceId: string, desired: RoundDesired | null): Promise<void> {
    // A desired property object is merged by a PATCH: set it to null first would lose atomicity, so the round
    // object always carries every field (a stale `mu` is overwritten with null when absent).
    const value =
      desired === null
        ? null
        : {
            modelEncoding: null,
            onnx: null,
            secagg: null,
            dp: null,
            normBound: null,
            ...desired,
            // Objects merge too: every key a previous job's spec or optimizer may have left is cleared.
            modelSpec: { ...STALE_SPEC_KEYS, ...desired.modelSpec },
            config: {
              mu: null,
              ...desired.config,
              optimizer: desired.config.optimizer
                ? { ...STALE_OPTIMIZER_KEYS, ...desired.config.optimizer }
                : null,
            },
            ...(desired.secagg
              ? { secagg: { neighbours: null, threshold: null, clipRange: null, ...desired.secagg } }
              : {}),
          };
    await this.registry.updateModuleTwin(
      deviceId,
      TRAINER_MODULE,
      { properties: { desired: { flotilla: value } } },
      "*",
    );
  }

  async configureEvaluation(deviceId: string, order: EvaluateOrder | null): Promise<void> {
    // Desired properties merge: the whole object goes every time, with the keys it may have set before cleared
    // (an int8 pair a previous order had, a previous job's model spec keys).
    const value =
      order === null
        ? null
        : {
            ...order,
            onnx: { int8Url: null, int8Sha256: null, ...order.onnx },
            modelSpec: { ...STALE_SPEC_KEYS, ...order.modelSpec },
          };
    await this.registry.updateModuleTwin(
      deviceId,
      TRAINER_MODULE,
      { properties: { desired: { [EVALUATE_DESIRED_KEY]: value } } },
      "*",
    );
  }

  private async invoke(
    deviceId: string,
    moduleId: string,
    methodName: string,
    payload: unknown,
  ): Promise<boolean> {
    try {
      const r = await this.client.invokeDeviceMethod(deviceId, moduleId, {
        methodName,
        payload,
        responseTimeoutInSeconds: this.timeout,
      });
      const status = (r.result as { status?: number } | undefined)?.status ?? 0;
      if (status >= 200 && status < 300) return true;
      this.log(`${methodName} on ${deviceId}/${moduleId}: status ${status}`);
      return false;
    } catch (e) {
      const code = (e as { response?: { statusCode?: number } }).response?.statusCode;
      this.log(`${methodName} on ${deviceId}/${moduleId} failed (${code ?? (e as Error).name}): non-fatal`);
      return false;
    }
  }

  async callTrainer(
    deviceId: string,
    methodName: string,
    payload: unknown,
    timeoutSeconds: number,
  ): Promise<MethodOutcome> {
    try {
      const r = await this.client.invokeDeviceMethod(deviceId, TRAINER_MODULE, {
        methodName,
        payload,
        responseTimeoutInSeconds: Math.max(5, Math.min(300, Math.ceil(timeoutSeconds))),
      });
      const result = r.result as { status?: number; payload?: unknown } | undefined;
      return { reached: true, status: result?.status ?? 0, payload: result?.payload ?? null };
    } catch (e) {
      const code = (e as { response?: { statusCode?: number } }).response?.statusCode;
      return {
        reached: false,
        reason: `${methodName}: ${code ?? (e as Error).name}: ${(e as Error).message}`,
      };
    }
  }

  startRound(deviceId: string, payload: RoundDesired): Promise<boolean> {
    return this.invoke(deviceId, TRAINER_MODULE, "startRound", payload);
  }

  abortRound(deviceId: string, jobId: string, round: number): Promise<boolean> {
    return this.invoke(deviceId, TRAINER_MODULE, "abortRound", { jobId, round });
  }

  ack(deviceId: string, updateIds: readonly string[]): Promise<boolean> {
    return this.invoke(deviceId, UPDATE_QUEUE_MODULE, "ack", { updateIds: [...updateIds] });
  }

  async configureQuantizer(
    deviceId: string,
    jobId: string,
    compression: string | null,
    layout?: QuantizerLayout,
  ): Promise<void> {
    const job =
      compression === null
        ? null
        : {
            compression,
            ...(layout ? { layoutHash: layout.layoutHash, segments: [...layout.segments] } : {}),
          };
    await this.registry.updateModuleTwin(
      deviceId,
      QUANTIZER_MODULE,
      { properties: { desired: { flotilla: { jobs: { [jobId]: job } } } } },
      "*",
    );
  }

  async configureProfiler(deviceId: string, modelKey: string, spec: ModelSpec | null): Promise<void> {
    await this.registry.updateModuleTwin(
      deviceId,
      PROFILER_MODULE,
      { properties: { desired: { jobModels: { [modelKey]: spec } } } },
      "*",
    );
  }

  async setQualityTag(deviceId: string, jobId: string, tag: QualityTag | null): Promise<void> {
    if (tag !== null) {
      await this.registry.updateTwin(deviceId, { tags: { flotilla: { quality: tag } } }, "*");
      return;
    }
    // Removing: only the job's own tag, with the twin's etag (a tag another job wrote meanwhile stays).
    const twin = (await this.registry.getTwin(deviceId)).responseBody as {
      etag?: string;
      tags?: { flotilla?: { quality?: { job?: unknown } } };
    };
    if (twin.tags?.flotilla?.quality?.job !== jobId) return;
    await this.registry.updateTwin(deviceId, { tags: { flotilla: { quality: null } } }, twin.etag ?? "*");
  }

  async setOpenRound(deviceId: string, jobId: string, round: number | null): Promise<void> {
    await this.registry.updateModuleTwin(
      deviceId,
      UPDATE_QUEUE_MODULE,
      { properties: { desired: { openRounds: { [jobId]: round } } } },
      "*",
    );
  }
}
