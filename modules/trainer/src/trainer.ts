import { createHash } from "node:crypto";
import { statfsSync } from "node:fs";
import * as os from "node:os";
import type { Dataset } from "../../../core/data/dataset";
import { countParams, modelLayout } from "../../../core/engine/models";
import { FlotillaError, isFlotillaError } from "../../../core/errors";
import { decodeTensor } from "../../../core/compress";
import { encodeMessage, evaluationUpdateId, EVALUATION_VERSION } from "../../../core/protocol/messages";
import { checkDeviceEvaluation } from "../../../core/round/evaluation";
import { weightsHash } from "../../../core/tensor/layout";
import { toLogger, type LineLog, type Logger } from "../../../core/log";
import { errorText, type EdgeModuleClient, type TwinLike } from "../../shared/module-client";
import { ModuleHost, type MethodHandler, type MethodTable } from "../../shared/host";
import type { TrainerMethod } from "./model";
import { frameChunks } from "../../shared/chunks";
import { DEFAULT_CHUNK_BYTES, DEFAULT_DATA_DIR } from "./config";
import { InProcessTrainExecutor, type DataRef, type TrainExecutor, type TrainOutcome } from "./executor";
import { TrainerInference, type InferencePrecision, type InferenceReport } from "./inference";
import { parseRoundOrder, type RoundOrder } from "./round";
import { parseEvaluateOrder } from "../../../core/protocol/round-order";
import { resolveData } from "./executor";
import { SECAGG_METHODS, SecAggSessions } from "./secagg";
import type { IdentitySigner, SecAggStep } from "../../../core/secagg/types";
import type { ModuleMetrics } from "../../shared/metrics";
import { defaultTrainerModuleMetrics, trainerMetrics } from "./metrics";
import {
  policyError,
  policyExclusion,
  type DevicePolicy,
  type PolicyExclusion,
  type PolicyFacts,
  type PolicyVerdict,
} from "../../../core/fleet/policy";
import { WritableProperties, type ValuesOf } from "../../shared/writable";
import { RoundArtifacts, type RoundLog } from "./artifacts";
import {
  CLOUD_DESIRED_KEYS,
  PARTICIPATION_KEY,
  REPORTED_KEYS,
  STATE_KEY,
  schemaOption,
  trainerProperties,
  type Participation,
  type ParticipationState,
  type TrainerProperties,
} from "./model";

/**
 * The trainer IoT Edge module (docs/iothub-protocol.md). The cloud orders a round through the module twin's desired
 * `flotilla` (or the `startRound` direct method); for each (jobId, round) it has not tried yet the trainer
 * downloads the global model, checks its sha256 and layout, trains on the local data from the global weights
 * (core/round/DeviceRuntime, through a TrainExecutor), and sends the FLT1 result frame on output `updates` (routed
 * to the update-queue module) in chunks of at most 255,000 bytes. Progress goes to the reported `flotilla`.
 *
 * A secure round (order field `secagg`, docs/iothub-protocol.md "Secure aggregation") trains the same way, but the
 * update stays in memory (./secagg.ts) and a signed key advertisement goes out instead; the cloud then drives the
 * protocol with the direct methods secaggShareKeys, secaggMaskInput (the masked update then leaves on the same
 * `updates` output) and secaggUnmask. The identity key signs through `keys` (Key Vault or the file provider).
 *
 * The operator's writable properties (./model.ts, docs/operations.md "Trainer and profiler properties") are
 * validated and acknowledged the Plug and Play way (modules/shared/writable.ts): participation (`enabled`), the
 * resource policy (training windows, free disk and memory floors, a training-time cap, threads), the data
 * directory and schema, and the retention of local artefacts. An order the policy forbids now is declined with
 * E_POLICY_EXCLUDED like any failed round (a failure frame, the reported error), and the reported `participation`
 * says why the device does not take part.
 *
 * Failures never crash the module: each is reported as status `error` with its code. A failure frame is sent so
 * the cloud need not wait, except for E_MODEL_HASH (the order or the blob cannot be trusted), rounds aborted by the
 * cloud (`abortRound`) and rounds superseded by a newer one.
 *
 * The link, the module twin, reporting, method dispatch, sending with retry and stopping are the module host's
 * (modules/shared/host.ts); this file is the trainer's own logic: order intake (one section, "round order intake"),
 * rounds, secure aggregation's steps, inference, and its method table.
 *
 * `startTrainer` takes an injected client and touches no globals, so a local fleet launcher can run many trainers
 * in one process (sharing a model cache and a TrainExecutor backed by a worker pool).
 */

export type TrainerStatus =
  "idle" | "downloading" | "training" | "queued" | "uploading" | "secagg" | "done" | "error";

/** The reported property `flotilla`. */
export interface TrainerState {
  readonly status: TrainerStatus;
  readonly jobId: string | null;
  readonly round: number | null;
  readonly numSamples: number;
  readonly metrics: { readonly loss: number; readonly accuracy: number; readonly trainMs: number } | null;
  /** Fraction of the local training done, 0..1 (while training). */
  readonly progress: number | null;
  readonly updateId: string | null;
  readonly error: { readonly code: string; readonly message: string } | null;
  /** Secure rounds: the last protocol step this trainer took part in (status `secagg`, then `done`). */
  readonly secaggStep?: SecAggStep | null;
  /** The published ONNX global model evaluated with onnxruntime on the local data (null before the first). */
  readonly inference?: InferenceReport | { readonly error: { code: string; message: string } } | null;
  readonly updatedAt: string;
}

/** Downloaded model blobs by sha256, shared by trainers in one process (a Map will do). */
export interface ModelCache {
  get(sha256: string): Promise<Uint8Array> | undefined;
  set(sha256: string, blob: Promise<Uint8Array>): unknown;
  delete(sha256: string): unknown;
}

export type FetchLike = (
  url: string,
  init: { signal: AbortSignal },
) => Promise<{
  ok: boolean;
  status: number;
  arrayBuffer(): Promise<ArrayBuffer>;
}>;

export interface TrainerOptions {
  client: EdgeModuleClient;
  /** This device's id (frame field and message property). Default: read from the client's credentials. */
  deviceId?: string;
  /** Directory of the local data (default /data); ignored when `data` is given. */
  dataDir?: string;
  data?: Dataset;
  /**
   * Held-out data (never trained on): each new global model is evaluated on it with onnxruntime and the result
   * sent to the cloud as an `evaluation` frame (docs/evaluation.md). A directory (FLOTILLA_EVAL_DIR) or, for
   * launchers, a dataset; neither = no evaluation.
   */
  evalDir?: string;
  evalData?: Dataset;
  modelCache?: ModelCache;
  trainExecutor?: TrainExecutor;
  /** A Logger, or a `(level, message)` callback; default: JSON lines (FLOTILLA_LOG_LEVEL/FORMAT). */
  log?: Logger | LineLog;
  fetch?: FetchLike;
  maxChunkBytes?: number;
  outputName?: string;
  /** Least time between two `training` progress reports, ms (default 2000). */
  progressIntervalMs?: number;
  downloadTimeoutMs?: number;
  twinTimeoutMs?: number;
  /** Send attempts per chunk before the round fails with E_UPLOAD (default 8). */
  sendAttempts?: number;
  /** Delay after the first failed send / reconnect, ms (doubles up to 60 s; default 1000). */
  retryDelayMs?: number;
  /** Close the client in stop() (the container entry owns its client; a launcher may not). */
  closeClient?: boolean;
  /**
   * ONNX inference with onnxruntime on the published global model (evaluation after each round, and the
   * `predict` method): "int8" (default), "fp32", or "off".
   */
  inference?: InferencePrecision | "off";
  /**
   * This device's identity key (secure aggregation signs its key advertisements with it): a core/secagg
   * KeyProvider (Key Vault, or the file provider), or anything with `signer(deviceId)`. Without it, secure rounds
   * fail with E_SECAGG_NO_KEY.
   */
  keys?: { signer(deviceId: string): IdentitySigner };
  /**
   * The trainer's Prometheus metrics (./metrics.ts, docs/metrics.md). Default: its own registry with IoT Edge's
   * labels from the environment and this device's id.
   */
  metrics?: ModuleMetrics;
  /**
   * The directory of local training artefacts (FLOTILLA_WORK_DIR): each round's log and trained weights, kept for
   * the `artifactRetentionHours` property (./artifacts.ts). Absent: none are written.
   */
  workDir?: string;
  /** The wall clock (ms since the epoch) of training windows and artefact ages; tests inject one. */
  now?: () => number;
  /**
   * The free disk (of the data directory's file system) and free memory the policy floors are judged against.
   * Default: fs.statfs on the data directory in effect and os.freemem().
   */
  resources?: () => PolicyFacts;
  /** How often the reported `participation` is re-evaluated besides at each order (ms, default 60,000). */
  participationCheckMs?: number;
  /**
   * The `maxThreads` property took effect (at a round's end or when idle): the container entry resizes the training
   * thread pool (./main.ts). Without it, the value is only passed to the executor in each job.
   */
  onMaxThreads?: (maxThreads: number) => void;
}

export interface TrainerHandle {
  state(): TrainerState;
  /** The writable properties in effect (./model.ts). */
  properties(): Readonly<ValuesOf<TrainerProperties>>;
  /** The reported `participation`: whether the device takes orders now, and why not. */
  participation(): Participation;
  /** Starts a round as the `startRound` method does; false if that (jobId, round) was already tried. */
  startRound(order: unknown): boolean;
  /** Resolves when no round is running or waiting (and its artefacts and reports are written). */
  idle(): Promise<void>;
  /** The trainer's metrics (serve them with serveMetrics, modules/shared/metrics.ts). */
  readonly metrics: ModuleMetrics;
  /**
   * Takes the module's link down (false: its client closes, as when the device loses its network) or brings it
   * back (true): the module host's setLinkEnabled (modules/shared/host.ts). For launchers replaying availability.
   */
  setLinkEnabled(enabled: boolean): Promise<void>;
  stop(): Promise<void>;
}

export const REPORTED_KEY = STATE_KEY;
/** Where round orders arrive: the module twin's desired property, and the direct method. */
export const ORDER_DESIRED_KEY = "flotilla";
export const ORDER_METHOD = "startRound";
/** Where evaluate-only orders arrive (the job's last model: docs/evaluation.md): the module twin's desired property. */
export const EVALUATE_DESIRED_KEY = "flotillaEvaluate";
const ABORTED = "E_ABORTED";
const SUPERSEDED = "E_ROUND_SUPERSEDED";
const DEADLINE = "E_ROUND_DEADLINE";
const STOPPED = "E_TRAINER_STOPPED";
/** Failures after which no failure frame is sent. */
const SILENT = new Set(["E_MODEL_HASH", ABORTED, SUPERSEDED, STOPPED]);

/** What evaluating a global model needs of an order: the round order whose starting model it is. */
type ModelRef = Pick<RoundOrder, "jobId" | "round" | "onnx" | "modelSpec">;

interface Run {
  readonly key: string;
  readonly order: RoundOrder;
  readonly controller: AbortController;
}

export async function startTrainer(opts: TrainerOptions): Promise<TrainerHandle> {
  const { client } = opts;
  const log = toLogger(opts.log, "trainer");
  const executor = opts.trainExecutor ?? new InProcessTrainExecutor();
  const doFetch: FetchLike = opts.fetch ?? ((url, init) => fetch(url, init));
  const cache: ModelCache = opts.modelCache ?? new Map<string, Promise<Uint8Array>>();
  const now = opts.now ?? Date.now;
  // The operator's writable properties (./model.ts): validated, applied and acknowledged by the framework; the
  // next-round ones (data, threads, training-time cap) wait while a round runs and apply when it ends.
  const props: WritableProperties<TrainerProperties> = new WritableProperties({
    specs: trainerProperties({ dataDir: opts.dataDir ?? DEFAULT_DATA_DIR }),
    cloudKeys: CLOUD_DESIRED_KEYS,
    reservedKeys: REPORTED_KEYS,
    ack: (outcomes, version) => host.ackDesired(outcomes, version),
    busy: () => active !== undefined,
    apply: (name, value) => {
      if (name === "maxThreads") opts.onMaxThreads?.(value as number);
      if (name === "artifactRetentionHours") void artifacts?.prune(value as number);
    },
    log: (level, line) => log.log(level, `property ${line}`),
  });
  const artifacts = opts.workDir !== undefined ? new RoundArtifacts(opts.workDir, log, now) : undefined;
  /** The data a round reads: the dataDir and dataSchema properties in effect (or a launcher's dataset). */
  const dataRefNow = (): DataRef => {
    if (opts.data) return { kind: "dataset", dataset: opts.data };
    const schema = schemaOption(props.get("dataSchema"));
    return { kind: "dir", dir: props.get("dataDir"), ...(schema !== undefined ? { schema } : {}) };
  };
  const outputName = opts.outputName ?? "updates";
  const maxChunkBytes = opts.maxChunkBytes ?? DEFAULT_CHUNK_BYTES;
  const progressIntervalMs = opts.progressIntervalMs ?? 2000;
  const downloadTimeoutMs = opts.downloadTimeoutMs ?? 120_000;
  const sendAttempts = opts.sendAttempts ?? 8;
  const deviceId = opts.deviceId ?? (await deviceIdOf(client));
  const moduleMetrics = opts.metrics ?? defaultTrainerModuleMetrics(deviceId);
  const metered = trainerMetrics(moduleMetrics);

  let state: TrainerState = {
    status: "idle",
    jobId: null,
    round: null,
    numSamples: 0,
    metrics: null,
    progress: null,
    updateId: null,
    error: null,
    updatedAt: new Date().toISOString(),
  };
  /** (jobId, round) pairs started (or found done in the reported properties at start-up). */
  const tried = new Set<string>();
  /** Highest round seen per job: an older order (a stale twin after a startRound) is ignored. */
  const latestRound = new Map<string, number>();
  let active: Run | undefined;
  let pending: Run | undefined;
  let chain: Promise<void> = Promise.resolve();
  const secagg = new SecAggSessions(deviceId);
  /** Masked inputs being sent (apart from `chain`: a training round of another job must not hold them up). */
  let maskChain: Promise<void> = Promise.resolve();

  // --- reported state: every change goes out (the host's reportIntervalMs 0), one patch at a time -----------------
  const setState = (patch: Partial<TrainerState>): void => {
    state = { ...state, ...patch, updatedAt: new Date().toISOString() };
    host.changed();
  };

  // --- ONNX inference ---------------------------------------------------------------------------------------------
  const inference =
    opts.inference === "off"
      ? undefined
      : new TrainerInference(
          opts.inference ?? "int8",
          (url) => fetchBlob(url, host.stopSignal),
          (kind, s) => metered.inferenceSeconds.observe({ kind }, s),
        );
  let inferenceChain: Promise<void> = Promise.resolve();
  let localData: { key: string; data: Dataset } | undefined;
  const evalRef: DataRef | undefined = opts.evalData
    ? { kind: "dataset", dataset: opts.evalData }
    : opts.evalDir !== undefined
      ? { kind: "dir", dir: opts.evalDir }
      : undefined;
  let heldOut: { key: string; data: Dataset } | undefined;
  /** Models already evaluated on the held-out data (jobId, round): each is sent once per process. */
  const evaluated = new Set<string>();
  const evaluateOnnx = async (order: ModelRef): Promise<void> => {
    if (!inference || !order.onnx || host.stopped) return;
    try {
      await inference.update(order);
      // The local data as this job's model reads it (loaded once per input shape).
      const dataRef = dataRefNow();
      const key = JSON.stringify([order.modelSpec.inputShape, dataRef.kind === "dir" ? dataRef : null]);
      if (localData?.key !== key) localData = { key, data: resolveData(dataRef, order.modelSpec) };
      const report = await inference.evaluate(localData.data);
      if (report) metered.inferenceAccuracy.set(report.accuracy);
      if (report && !host.stopped) setState({ inference: report });
      if (evalRef) {
        const shape = JSON.stringify(order.modelSpec.inputShape);
        if (heldOut?.key !== shape) heldOut = { key: shape, data: resolveData(evalRef, order.modelSpec) };
        await sendEvaluation(heldOut.data);
      }
    } catch (e) {
      const err = errorOf(e);
      log.warn(`ONNX inference on round ${order.round - 1}'s model: ${err.code}: ${err.message}`, {
        jobId: order.jobId,
        round: order.round - 1,
        code: err.code,
      });
      if (!host.stopped) setState({ inference: { error: err } });
    }
  };

  /**
   * Fleet-wide evaluation (docs/evaluation.md): the loaded global model on the held-out data, sent as an
   * `evaluation` frame through the same output as updates (the update-queue keeps it until the cloud acknowledges
   * it, so one made offline is not lost). Models of round 0 (the initial model) have no round record: not sent.
   */
  const sendEvaluation = async (data: Dataset): Promise<void> => {
    const r = await inference!.evaluateHeldOut(data);
    if (!r || r.modelRound < 1 || host.stopped) return;
    const key = keyOf({ jobId: r.jobId, round: r.modelRound });
    if (evaluated.has(key)) return;
    const evaluation = checkDeviceEvaluation({
      deviceId,
      round: r.modelRound,
      samples: r.samples,
      accuracy: r.accuracy,
      loss: r.loss,
      mae: r.mae,
    });
    const frame = encodeMessage({
      type: "evaluation",
      v: EVALUATION_VERSION,
      jobId: r.jobId,
      ...evaluation,
      precision: r.precision,
    });
    const updateId = await sendFrame(
      frame,
      { jobId: r.jobId, round: r.modelRound },
      host.stopSignal,
      evaluationUpdateId(createHash("sha256").update(frame).digest("hex")),
    );
    evaluated.add(key);
    log.info(
      `round ${r.modelRound}'s model of ${r.jobId} evaluated on ${r.samples} held-out samples` +
        (r.accuracy !== undefined ? ` (accuracy ${r.accuracy.toFixed(4)})` : ""),
      {
        jobId: r.jobId,
        round: r.modelRound,
        updateId,
        samples: r.samples,
        accuracy: r.accuracy,
        loss: r.loss,
      },
    );
  };

  // --- round order intake --------------------------------------------------------------------------------------
  // Orders arrive through the module twin's desired `flotilla` (read at every connection and on each patch) and the
  // `startRound` direct method (docs/iothub-protocol.md); both end in `onOrder`. This section is the only place that
  // knows where orders come from.
  const keyOf = (o: { jobId: string; round: number }): string => `${o.jobId}\u0000${o.round}`;

  /** Orders declined by the device's policy (key → the E_POLICY_EXCLUDED error), for the startRound method's answer. */
  const declined = new Map<string, FlotillaError>();

  /**
   * Accepts an order: "started", "seen" (tried already, or older than one seen), or the policy's refusal (the
   * order is declined: failure frame, reported error; a running round goes on). Throws E_ROUND_INVALID for a
   * malformed one.
   */
  const takeOrder = (value: unknown, source: string): "started" | "seen" | FlotillaError => {
    if (host.stopped) return "seen";
    const order = parseRoundOrder(value); // throws E_ROUND_INVALID
    if (!order) return "seen";
    const key = keyOf(order);
    if (tried.has(key)) return declined.get(key) ?? "seen";
    if ((latestRound.get(order.jobId) ?? -1) > order.round) {
      log.info(`ignoring round ${order.round} of ${order.jobId} from ${source}: a newer one was seen`, {
        jobId: order.jobId,
        round: order.round,
      });
      return "seen";
    }
    tried.add(key);
    latestRound.set(order.jobId, order.round);
    // The device's own policy, judged now (the cloud's view of it may be stale): a refused order never
    // supersedes the running round.
    const verdict = judgeParticipation();
    if (verdict) {
      const err = policyError(verdict);
      declined.set(key, err);
      decline(order, err, source);
      return err;
    }
    secagg.dropJob(order.jobId, order.round); // a newer round supersedes an unfinished secure one
    const run: Run = { key, order, controller: new AbortController() };
    // One round at a time: a newer order supersedes the running and the waiting one.
    active?.controller.abort(new FlotillaError(SUPERSEDED, "a newer round was ordered"));
    pending?.controller.abort(new FlotillaError(SUPERSEDED, "a newer round was ordered"));
    pending = run;
    log.info(`round ${order.round} of ${order.jobId} ordered through ${source}`, {
      jobId: order.jobId,
      round: order.round,
      source,
    });
    chain = chain.then(async () => {
      if (pending === run) pending = undefined;
      active = run;
      try {
        await runRound(run);
      } finally {
        active = undefined;
        // Properties that waited for the round (202) take effect now, before the next one starts.
        props.applyPending();
      }
    });
    return "started";
  };
  const onOrder = (value: unknown, source: string): boolean => takeOrder(value, source) === "started";

  /**
   * An order the policy forbids: declined the way a failed round is (the one-line failure frame the Function
   * counts, docs/iothub-protocol.md; the reported error when no round runs), never trained.
   */
  const decline = (order: RoundOrder, err: FlotillaError, source: string): void => {
    const base = { jobId: order.jobId, round: order.round };
    metered.roundsFailed.inc({ reason: err.code });
    log.warn(`round ${order.round} of ${order.jobId} from ${source} declined: ${err.code}: ${err.message}`, {
      ...base,
      code: err.code,
    });
    if (!active)
      setState({
        ...base,
        status: "error",
        numSamples: 0,
        metrics: null,
        progress: null,
        updateId: null,
        error: { code: err.code, message: err.message },
        secaggStep: null,
      });
    const frame = encodeMessage({ type: "failure", ...base, deviceId, code: err.code, reason: err.message });
    void sendFrame(frame, order, host.stopSignal).catch((e: unknown) =>
      log.warn(`sending the failure frame failed: ${errorText(e)}`, { ...base, err: e }),
    );
  };

  // --- participation: the device's policy judged on the device --------------------------------------------------
  const TAKING_PART: Participation = { state: "enabled", reason: "the policy allows training now" };
  let participation: Participation = TAKING_PART;
  const PARTICIPATION_OF: Partial<Record<PolicyExclusion, ParticipationState>> = {
    disabled: "disabled",
    window: "outside-window",
    disk: "low-disk",
    memory: "low-memory",
  };
  const policyNow = (): DevicePolicy => {
    const v = props.values();
    return {
      enabled: v.enabled,
      maxTrainingMinutes: v.maxTrainingMinutes,
      maxThreads: v.maxThreads,
      minFreeDiskBytes: v.minFreeDiskBytes,
      minFreeMemoryBytes: v.minFreeMemoryBytes,
      trainingWindows: v.trainingWindows,
    };
  };
  /** Free disk of the data directory's file system (bytes an unprivileged process may use) and free memory. */
  const resourcesNow = (): PolicyFacts => {
    if (opts.resources) return opts.resources();
    let freeDiskBytes: number | undefined;
    for (const dir of opts.data ? [process.cwd()] : [props.get("dataDir"), process.cwd()]) {
      try {
        const st = statfsSync(dir);
        freeDiskBytes = Number(st.bavail) * Number(st.bsize);
        break;
      } catch {
        // the data directory may not be mounted (yet): the working directory's file system then
      }
    }
    return { ...(freeDiskBytes !== undefined ? { freeDiskBytes } : {}), freeMemoryBytes: os.freemem() };
  };
  /**
   * Judges the policy now (core/fleet/policy.ts policyExclusion: the same judgement as the cloud's selection) and
   * reports `participation` when it changed. Returns the verdict (undefined: the device takes orders).
   */
  const judgeParticipation = (): PolicyVerdict | undefined => {
    let verdict: PolicyVerdict | undefined;
    try {
      verdict = policyExclusion(policyNow(), resourcesNow(), now());
    } catch (e) {
      log.warn(`judging the device policy failed: ${errorText(e)}`, { err: e });
    }
    // Only the reasons policyExclusion gives without a round's own figures (duration, upload size) occur here.
    const next: Participation = verdict
      ? { state: PARTICIPATION_OF[verdict.reason] ?? "disabled", reason: verdict.detail }
      : TAKING_PART;
    if (next.state !== participation.state || next.reason !== participation.reason) {
      if (next.state !== participation.state)
        log.info(`participation: ${next.state} (${next.reason})`, {
          participation: next.state,
        });
      participation = next;
      host.changed();
    }
    return verdict;
  };

  /** Evaluate-only orders taken ((jobId, round) of the model): each is evaluated once per process. */
  const evaluateOrders = new Set<string>();
  /**
   * The desired evaluate-only order (`flotillaEvaluate`, core/protocol/round-order.ts): the model it names goes
   * through the same evaluation as a round order's starting model (ONNX download, local data, held-out data, one
   * `evaluation` frame), with no training and no update. A bad order is logged and reported as the `inference`
   * error (E_EVAL_ORDER_INVALID / E_EVAL_ORDER_VERSION); the trainer's round state is left alone.
   */
  const onEvaluateOrder = (value: unknown): void => {
    if (host.stopped) return;
    try {
      const order = parseEvaluateOrder(value);
      if (!order) return;
      const key = keyOf(order);
      if (evaluateOrders.has(key)) return;
      evaluateOrders.add(key);
      if (!inference || !evalRef) {
        log.info(
          `round ${order.round}'s model of ${order.jobId}: evaluation ordered, but ` +
            (inference ? "this trainer has no held-out data" : "inference is off"),
          { jobId: order.jobId, round: order.round },
        );
        return;
      }
      log.info(`round ${order.round}'s model of ${order.jobId}: evaluation ordered`, {
        jobId: order.jobId,
        round: order.round,
      });
      // As the starting model of a round order round + 1 would be.
      const ref: ModelRef = { ...order, round: order.round + 1 };
      inferenceChain = inferenceChain.then(() => evaluateOnnx(ref));
    } catch (e) {
      const err = errorOf(e);
      log.warn(`${err.code}: ${err.message}`, { code: err.code });
      setState({ inference: { error: err } });
    }
  };

  /** The desired order (the whole desired `flotilla`): a bad one is reported as this trainer's error. */
  const onDesiredOrder = (value: unknown): void => {
    try {
      onOrder(value, "the module twin");
    } catch (e) {
      const err = errorOf(e);
      log.warn(`${err.code}: ${err.message}`, { code: err.code });
      const o = (value ?? {}) as { jobId?: unknown; round?: unknown };
      setState({
        status: "error",
        jobId: typeof o.jobId === "string" ? o.jobId : null,
        round: typeof o.round === "number" ? o.round : null,
        progress: null,
        error: err,
      });
    }
  };

  /** Every twin GET: rounds this device already finished (before a restart) are not trained again. */
  const onTwin = (t: TwinLike, fresh: boolean): void => {
    if (fresh) {
      const r = t.properties.reported?.[REPORTED_KEY] as Partial<TrainerState> | undefined;
      if (r && typeof r.jobId === "string" && typeof r.round === "number") {
        // A secure round in progress is not retried either: its session (keys, update) died with the process.
        if (
          ["done", "queued", "uploading", "secagg"].includes(r.status as string) ||
          (r.status === "error" && r.error?.code === "E_POLICY_EXCLUDED")
        )
          tried.add(keyOf(r as RoundOrder));
        latestRound.set(r.jobId, Math.max(latestRound.get(r.jobId) ?? -1, r.round));
      }
    }
    // The operator's properties first (the last good values from the reported acks at the first read), so that an
    // order in the same document is judged by them.
    props.onTwin(t.properties.desired, t.properties.reported as Record<string, unknown> | undefined);
    judgeParticipation();
    // The SDK re-subscribes after a reconnect but does not re-read the twin: an order set meanwhile is read here.
    onDesiredOrder(t.properties.desired[ORDER_DESIRED_KEY]);
    onEvaluateOrder(t.properties.desired[EVALUATE_DESIRED_KEY]);
  };
  const onDesiredPatch = (delta: Record<string, unknown>, t: TwinLike): void => {
    props.onPatch(delta);
    judgeParticipation();
    if (EVALUATE_DESIRED_KEY in delta)
      onEvaluateOrder(t.properties.desired[EVALUATE_DESIRED_KEY] ?? delta[EVALUATE_DESIRED_KEY]);
    if (!(ORDER_DESIRED_KEY in delta)) return;
    // The SDK has merged the patch into properties.desired: read the whole object from there.
    onDesiredOrder(t.properties.desired[ORDER_DESIRED_KEY] ?? delta[ORDER_DESIRED_KEY]);
  };

  /**
   * The `startRound` method: 200 accepted, 409 E_ROUND_SEEN (tried already, or older), 403 E_POLICY_EXCLUDED (the
   * device's policy declines it now), 400 E_ROUND_INVALID.
   */
  const startRoundMethod: MethodTable[string] = (payload) => {
    if (!payload) throw new FlotillaError("E_ROUND_INVALID", `${ORDER_METHOD} payload must be a JSON object`);
    if (!parseRoundOrder(payload))
      throw new FlotillaError("E_ROUND_INVALID", `${ORDER_METHOD} payload has no jobId`);
    const taken = takeOrder(payload, ORDER_METHOD);
    if (typeof taken !== "string")
      return { status: 403, payload: { accepted: false, code: taken.code, message: taken.message } };
    return taken === "started"
      ? { status: 200, payload: { accepted: true, jobId: payload.jobId, round: payload.round } }
      : {
          status: 409,
          payload: {
            accepted: false,
            code: "E_ROUND_SEEN",
            message: "this round was already started (or is older)",
          },
        };
  };

  // --- one round ------------------------------------------------------------------------------------------------
  const runRound = async (run: Run): Promise<void> => {
    const { order, controller } = run;
    const signal = controller.signal;
    const base = { jobId: order.jobId, round: order.round };
    let deadlineTimer: NodeJS.Timeout | undefined;
    const deadlineError = new FlotillaError(
      DEADLINE,
      `missed the round deadline ${new Date(order.deadline).toISOString()}`,
    );
    if (order.deadline > 0) {
      deadlineTimer = setTimeout(
        () => controller.abort(deadlineError),
        Math.max(0, order.deadline - Date.now()),
      );
    }
    // The round's local artefacts (./artifacts.ts): its log, and the trained local model when training finished.
    const startedAt = new Date(now()).toISOString();
    const data = dataRefNow();
    const roundLog: Record<string, unknown> = {
      ...base,
      deviceId,
      startedAt,
      modelSha256: order.modelSha256,
      layoutHash: order.layoutHash,
      modelSpec: order.modelSpec,
      config: order.config,
      data: data.kind === "dir" ? { dir: data.dir, schema: props.get("dataSchema") } : { dataset: true },
      maxTrainingMinutes: props.get("maxTrainingMinutes"),
      secure: order.secagg !== undefined,
    };
    let localModel: Float32Array | undefined;
    let roundCode: string | undefined;
    try {
      if (signal.aborted) throw signal.reason;
      metered.roundsStarted.inc();
      setState({
        ...base,
        status: "downloading",
        numSamples: 0,
        metrics: null,
        progress: null,
        updateId: null,
        error: null,
        secaggStep: null,
      });
      const { weights, sha256: weightsSha256 } = await download(order, signal);
      const layout = modelLayout(order.modelSpec);
      if (layout.hash !== order.layoutHash) {
        throw new FlotillaError(
          "E_MODEL_LAYOUT",
          `layoutHash ${order.layoutHash} does not match modelSpec (${layout.hash})`,
        );
      }
      setState({ status: "training", progress: 0 });
      // The operator's cap on local training time (maxTrainingMinutes, read at the round's start): training stops
      // after the batch that reaches it and the update of the steps done goes out (docs/operations.md).
      const maxTrainMs = props.get("maxTrainingMinutes") * 60_000;
      let lastProgress = Date.now();
      let samplesTotal = 0;
      const outcome: TrainOutcome = await executor.run(
        {
          ...base,
          deviceId,
          spec: order.modelSpec,
          weights,
          modelSha256: weightsSha256,
          layoutHash: order.layoutHash,
          config: order.config,
          data,
          ...(maxTrainMs > 0 ? { maxTrainMs } : {}),
          ...(order.dp ? { dp: order.dp } : {}),
          ...(order.normBound !== undefined ? { normBound: order.normBound } : {}),
        },
        signal,
        (done, total) => {
          samplesTotal = total;
          const now = Date.now();
          if (now - lastProgress < progressIntervalMs || signal.aborted) return;
          lastProgress = now;
          setState({ status: "training", progress: total > 0 ? Math.min(1, done / total) : 0 });
        },
      );
      if (signal.aborted) throw signal.reason;
      if (order.deadline > 0 && Date.now() > order.deadline) throw deadlineError;
      if (outcome.stopped) {
        const s = outcome.stopped;
        log.info(
          `round ${order.round} of ${order.jobId}: training stopped at the ${props.get("maxTrainingMinutes")} min cap ` +
            `after ${s.steps} steps (${s.samplesDone} of ${s.samplesPlanned} samples); sending the update of the steps done`,
          { ...base, steps: s.steps, samplesDone: s.samplesDone, samplesPlanned: s.samplesPlanned },
        );
      }
      const metrics = {
        loss: outcome.metrics.loss,
        accuracy: outcome.metrics.accuracy,
        trainMs: outcome.metrics.trainMs,
      };
      setState({ status: "queued", numSamples: outcome.numSamples, metrics, progress: 1 });
      if (artifacts && weights.length === outcome.delta.length) {
        localModel = weights.slice();
        for (let i = 0; i < localModel.length; i++) localModel[i] += outcome.delta[i];
      }
      Object.assign(roundLog, {
        numSamples: outcome.numSamples,
        metrics,
        ...(outcome.stopped ? { stoppedAtCap: outcome.stopped } : {}),
      });
      const trainSeconds = outcome.metrics.trainMs / 1000;
      metered.trainingSeconds.observe(trainSeconds);
      const epochs = (order.config as { epochs?: unknown }).epochs;
      const trained =
        samplesTotal > 0 ? samplesTotal : outcome.numSamples * (typeof epochs === "number" ? epochs : 1);
      if (trainSeconds > 0) metered.samplesPerSecond.set(trained / trainSeconds);
      if (Number.isFinite(metrics.loss)) metered.localLoss.set(metrics.loss);
      if (Number.isFinite(metrics.accuracy)) metered.localAccuracy.set(metrics.accuracy);
      metered.localSamples.set(outcome.numSamples);
      if (order.secagg) {
        // Secure aggregation, step 1: the update stays here; the signed key advertisement goes out instead.
        if (!opts.keys)
          throw new FlotillaError("E_SECAGG_NO_KEY", "secure aggregation needs an identity key provider");
        // Differential privacy: the delta is already clipped and noised; with adaptive clipping the clip indicator
        // rides as one extra value (the cloud sees only its sum), and every update weighs 1 (equal weights).
        let update = outcome.delta;
        if (order.dp && outcome.dpClipBit !== undefined) {
          update = new Float32Array(outcome.delta.length + 1);
          update.set(outcome.delta);
          update[outcome.delta.length] = outcome.dpClipBit;
        }
        const advertise = await secagg.start(
          { ...base, deadline: order.deadline, stepSeconds: order.secagg.stepSeconds },
          update,
          outcome.numSamples,
          metrics,
          opts.keys.signer(deviceId),
          order.dp ? 1 : undefined,
        );
        if (signal.aborted) {
          secagg.drop(order.jobId, order.round);
          throw signal.reason;
        }
        const updateId = await sendFrame(encodeMessage(advertise), order, signal);
        setState({ status: "secagg", secaggStep: "advertise", updateId });
        roundLog.updateId = updateId;
        metered.roundsCompleted.inc();
        log.info(`round ${order.round} of ${order.jobId}: keys advertised (secure aggregation)`, {
          ...base,
          updateId,
        });
        inferenceChain = inferenceChain.then(() => evaluateOnnx(order));
        return;
      }
      const frame = encodeMessage({
        type: "result",
        ...base,
        deviceId,
        layoutHash: order.layoutHash,
        numSamples: outcome.numSamples,
        metrics,
        delta: outcome.delta,
        ...(outcome.dpClipBit !== undefined ? { dpClipBit: outcome.dpClipBit } : {}),
      });
      const updateId = await sendFrame(frame, order, signal);
      setState({ status: "done", updateId });
      roundLog.updateId = updateId;
      metered.roundsCompleted.inc();
      log.info(`round ${order.round} of ${order.jobId} done (${outcome.numSamples} samples)`, {
        ...base,
        updateId,
        numSamples: outcome.numSamples,
      });
      // After the update is out (never on the round's critical path): the round's starting model, as ONNX.
      inferenceChain = inferenceChain.then(() => evaluateOnnx(order));
    } catch (e) {
      const err = signal.aborted && isFlotillaError(signal.reason) ? signal.reason : e;
      const { code, message } = errorOf(err);
      roundCode = code;
      Object.assign(roundLog, { error: { code, message } });
      if (code !== STOPPED) metered.roundsFailed.inc({ reason: code });
      log.log(
        code === SUPERSEDED ? "info" : "warn",
        `round ${order.round} of ${order.jobId}: ${code}: ${message}`,
        {
          ...base,
          code,
        },
      );
      if (!SILENT.has(code)) {
        try {
          const frame = encodeMessage({ type: "failure", ...base, deviceId, code, reason: message });
          // A failure frame is still worth sending after the deadline; abort only if the trainer stops.
          await sendFrame(frame, order, host.stopSignal);
        } catch (e2) {
          log.warn(`sending the failure frame failed: ${errorText(e2)}`, { ...base, err: e2 });
        }
      }
      if (code !== STOPPED) setState({ ...base, status: "error", progress: null, error: { code, message } });
    } finally {
      clearTimeout(deadlineTimer);
      if (artifacts && roundCode !== STOPPED) {
        const log: RoundLog = {
          ...(roundLog as typeof roundLog & typeof base),
          deviceId,
          startedAt,
          endedAt: new Date(now()).toISOString(),
          status: roundCode === undefined ? "done" : "error",
        };
        void artifacts.record(
          log,
          roundCode === undefined ? localModel : undefined,
          props.get("artifactRetentionHours"),
        );
      }
    }
  };
  /** The global model: from the cache or over http(s), checked against modelSha256 and the spec's size. */
  /** The round's global weights, and the sha256 of their float32 bytes. */
  const download = async (
    order: RoundOrder,
    signal: AbortSignal,
  ): Promise<{ weights: Float32Array; sha256: string }> => {
    let blob = cache.get(order.modelSha256);
    if (!blob) {
      blob = fetchBlob(order.modelUrl, signal);
      cache.set(order.modelSha256, blob);
    }
    let bytes: Uint8Array;
    try {
      bytes = await abortable(blob, signal);
    } catch (e) {
      if (cache.get(order.modelSha256) === blob) cache.delete(order.modelSha256);
      throw e;
    }
    const sha = createHash("sha256").update(bytes).digest("hex");
    if (sha !== order.modelSha256) {
      if (cache.get(order.modelSha256) === blob) cache.delete(order.modelSha256);
      throw new FlotillaError(
        "E_MODEL_HASH",
        `model blob has sha256 ${sha}, the round expects ${order.modelSha256}`,
      );
    }
    const params = countParams(order.modelSpec);
    if (order.modelEncoding === "flz") {
      // Downlink compression: the blob is one envelope (core/compress); its checksum, layout and length are
      // checked as it is decoded.
      try {
        const weights = decodeTensor(bytes, { layoutHash: order.layoutHash, length: params });
        return { weights, sha256: weightsHash(weights) };
      } catch (e) {
        if (isFlotillaError(e))
          throw new FlotillaError("E_MODEL_SIZE", `model envelope: ${e.message}`, { cause: e });
        throw e;
      }
    }
    if (bytes.byteLength !== params * 4) {
      throw new FlotillaError(
        "E_MODEL_SIZE",
        `model blob has ${bytes.byteLength} bytes, modelSpec needs ${params} float32 (${params * 4} bytes)`,
      );
    }
    const weights = new Float32Array(params);
    new Uint8Array(weights.buffer).set(bytes);
    return { weights, sha256: order.modelSha256 };
  };

  const fetchBlob = async (url: string, signal: AbortSignal): Promise<Uint8Array> => {
    // The download itself stops only on its own timeout: other trainers sharing the cache may still want it.
    void signal;
    const timeout = AbortSignal.timeout(downloadTimeoutMs);
    const t0 = performance.now();
    let res: Awaited<ReturnType<FetchLike>>;
    try {
      res = await doFetch(url, { signal: timeout });
    } catch (e) {
      throw new FlotillaError("E_MODEL_DOWNLOAD", `GET ${redact(url)} failed: ${errorText(e)}`, { cause: e });
    }
    if (!res.ok) throw new FlotillaError("E_MODEL_DOWNLOAD", `GET ${redact(url)} answered ${res.status}`);
    try {
      const bytes = new Uint8Array(await res.arrayBuffer());
      metered.downloadSeconds.observe((performance.now() - t0) / 1000);
      metered.downloadBytes.inc(bytes.byteLength);
      return bytes;
    } catch (e) {
      throw new FlotillaError("E_MODEL_DOWNLOAD", `reading ${redact(url)} failed: ${errorText(e)}`, {
        cause: e,
      });
    }
  };

  /** Sends a frame as chunks on the `updates` output, each retried with backoff (the host's). Returns the updateId. */
  const sendFrame = async (
    frame: Uint8Array,
    order: { jobId: string; round: number },
    signal: AbortSignal,
    id?: string,
  ): Promise<string> => {
    const { updateId, messages } = frameChunks(
      frame,
      { jobId: order.jobId, round: order.round, deviceId },
      maxChunkBytes,
      id,
    );
    await host.sendWithRetry(outputName, messages, { failCode: "E_UPLOAD", attempts: sendAttempts, signal });
    return updateId;
  };

  // --- direct methods (besides startRound, in the order intake above) ------------------------------------------------
  const abortRound: MethodTable[string] = (payload) => {
    const p = payload ?? {};
    const aborted: string[] = [];
    for (const run of [active, pending]) {
      if (!run || run.controller.signal.aborted) continue;
      const matches =
        (p.jobId === undefined || p.jobId === run.order.jobId) &&
        (p.round === undefined || p.round === run.order.round);
      if (!matches) continue;
      run.controller.abort(new FlotillaError(ABORTED, "aborted by the abortRound method"));
      // A stopped job that is started again re-sends this round: it must train then, not count as tried.
      tried.delete(run.key);
      aborted.push(`${run.order.jobId}/${run.order.round}`);
    }
    if (typeof p.jobId === "string") {
      const round = typeof p.round === "number" ? p.round : undefined;
      if (secagg.drop(p.jobId, round) > 0) aborted.push(`${p.jobId}/${round ?? "*"} (secure aggregation)`);
    }
    return {
      status: aborted.length > 0 ? 200 : 404,
      payload: { aborted: aborted.length > 0, rounds: aborted },
    };
  };

  const predict: MethodTable[string] = async (payload) => {
    if (!inference)
      return {
        status: 501,
        payload: { code: "E_PREDICT_DISABLED", message: "inference is off on this trainer" },
      };
    try {
      return { status: 200, payload: await inference.predict(payload) };
    } catch (e) {
      const err = errorOf(e);
      return { status: err.code === "E_PREDICT_NO_MODEL" ? 404 : 400, payload: err };
    }
  };

  /** Secure aggregation, steps 2-4 (./secagg.ts): 200 with the step's answer, 400 {code, message} otherwise. */
  const secaggMethod =
    (method: string, step: SecAggStep): MethodTable[string] =>
    (payload) => {
      const answer = secagg.answer(step, payload);
      const jobId = payload?.jobId;
      const round = payload?.round;
      if (answer.status !== 200) {
        const err = answer.payload as { code: string; message: string };
        log.warn(`${method} for ${String(jobId)}/${String(round)}: ${err.code}: ${err.message}`, {
          method,
          jobId,
          round,
          code: err.code,
        });
        return { status: answer.status, payload: answer.payload };
      }
      if (state.jobId === jobId && state.round === round)
        setState({ status: step === "unmask" ? "done" : "secagg", secaggStep: step });
      const frame = answer.frame;
      if (frame) {
        // The masked input leaves on the updates output like any update (after the answer: it may be large).
        maskChain = maskChain.then(async () => {
          await Promise.resolve(); // the method's answer first
          try {
            const updateId = await sendFrame(encodeMessage(frame), frame, host.stopSignal);
            log.info(`round ${frame.round} of ${frame.jobId}: masked input sent (${updateId})`, {
              jobId: frame.jobId,
              round: frame.round,
              updateId,
            });
          } catch (e) {
            const err = errorOf(e);
            log.warn(
              `sending the masked input of ${frame.jobId}/${frame.round}: ${err.code}: ${err.message}`,
              {
                jobId: frame.jobId,
                round: frame.round,
                code: err.code,
              },
            );
            if (state.jobId === frame.jobId && state.round === frame.round)
              setState({ status: "error", error: err });
          }
        });
      }
      return { status: answer.status, payload: answer.payload };
    };

  // The update-queue module tells the trainer when its disk refused an update (modules/update-queue/src/main.ts,
  // holdRefused): this trainer's output succeeded — edgeHub took the message — so this is the only way to learn it.
  // The round's state becomes `error` (E_QUEUE_*), which the cloud sees, until the queue reports it stored.
  let refused: { updateId: string; status: TrainerStatus } | undefined;
  const updateNotStored: MethodTable[string] = (payload) => {
    const p = payload ?? {};
    const code = typeof p.code === "string" && /^E_[A-Z0-9_]+$/.test(p.code) ? p.code : "E_QUEUE_STORE";
    const detail = typeof p.message === "string" ? p.message.slice(0, 500) : "no detail";
    const ours = typeof p.updateId === "string" && p.updateId === state.updateId;
    log.error(`the update-queue could not store update ${String(p.updateId)}: ${code}: ${detail}`, {
      updateId: p.updateId,
      code,
    });
    if (ours && state.status !== "error") {
      refused = { updateId: p.updateId as string, status: state.status };
      const held = p.held === true ? "held in memory and retried" : "not held: lost unless redelivered";
      setState({
        status: "error",
        error: { code, message: `the update-queue could not store it (${held}): ${detail}` },
      });
    }
    return { status: 200, payload: { known: ours } };
  };
  const updateStored: MethodTable[string] = (payload) => {
    const p = payload ?? {};
    const ours = refused !== undefined && p.updateId === refused.updateId && p.updateId === state.updateId;
    if (ours && refused && state.status === "error") setState({ status: refused.status, error: null });
    if (ours) refused = undefined;
    return { status: 200, payload: { known: ours } };
  };

  // Typed with the model's names (./model.ts METHODS): a method missing here or not in the model does not compile.
  const secaggMethods = Object.fromEntries(
    SECAGG_METHODS.map(({ method, step }) => [method, secaggMethod(method, step)]),
  ) as Record<(typeof SECAGG_METHODS)[number]["method"], MethodHandler>;
  const methods = {
    [ORDER_METHOD]: startRoundMethod,
    abortRound,
    predict,
    ...secaggMethods,
    status: () => ({ status: 200, payload: state }),
    updateNotStored,
    updateStored,
  } satisfies Record<TrainerMethod, MethodHandler>;

  // --- the host: link, twin, reporting, method dispatch, sending, stop ---------------------------------------------
  const host: ModuleHost = new ModuleHost({
    name: "trainer",
    client,
    log,
    stoppedCode: STOPPED,
    internalCode: "E_TRAINER_INTERNAL",
    twinTimeoutMs: opts.twinTimeoutMs,
    reportIntervalMs: 0,
    retryDelayMs: opts.retryDelayMs,
    closeClient: opts.closeClient,
    metrics: moduleMetrics,
    reportedKeys: REPORTED_KEYS,
    hooks: {
      onTwin,
      onDesiredPatch,
      reported: () => ({ [REPORTED_KEY]: state, [PARTICIPATION_KEY]: participation }),
    },
    methods,
  });
  await host.start();
  // Training windows open and close, disk and memory change: participation is re-judged now and then (and at
  // every order).
  const participationTimer = setInterval(() => {
    judgeParticipation();
    void artifacts?.prune(props.get("artifactRetentionHours"));
  }, opts.participationCheckMs ?? 60_000);
  void artifacts?.prune(props.get("artifactRetentionHours"));
  participationTimer.unref?.();

  return {
    metrics: moduleMetrics,
    state: () => state,
    properties: () => props.values(),
    participation: () => participation,
    startRound: (order) => onOrder(order, ORDER_METHOD),
    idle: async () => {
      for (let c = chain, m = maskChain; ; c = chain, m = maskChain) {
        await c;
        await m;
        if (c === chain && m === maskChain) break;
      }
      await artifacts?.settled();
      await host.reportsSettled();
    },
    setLinkEnabled: (enabled: boolean) => host.setLinkEnabled(enabled),
    stop: () =>
      host.stop({
        drain: async () => {
          clearInterval(participationTimer);
          const reason = host.stopSignal.reason as unknown;
          active?.controller.abort(reason);
          pending?.controller.abort(reason);
          await chain.catch(() => undefined);
          await maskChain.catch(() => undefined);
          await inferenceChain;
          await inference?.close();
        },
      }),
  };
}

function errorOf(e: unknown): { code: string; message: string } {
  if (isFlotillaError(e)) return { code: e.code, message: e.message };
  const code = (e as { code?: unknown })?.code;
  return {
    code: typeof code === "string" && code.startsWith("E_") ? code : "E_TRAINER_INTERNAL",
    message: e instanceof Error ? e.message : String(e),
  };
}

/** The device id from the client's credentials (public getDeviceCredentials of the SDK's auth providers). */
async function deviceIdOf(client: EdgeModuleClient): Promise<string> {
  const auth = (client as unknown as { _transport?: { _authenticationProvider?: AuthLike } })._transport
    ?._authenticationProvider;
  if (auth && typeof auth.getDeviceCredentials === "function") {
    const id = await new Promise<string | undefined>((resolve) =>
      auth.getDeviceCredentials((err, creds) => resolve(err ? undefined : creds?.deviceId)),
    );
    if (id) return id;
  }
  throw new FlotillaError("E_CONFIG_MISSING", "trainer: deviceId not given and not readable from the client");
}
interface AuthLike {
  getDeviceCredentials(cb: (err?: Error, creds?: { deviceId?: string }) => void): void;
}

/** The URL without its query (a SAS token must not reach logs or the twin). */
function redact(url: string): string {
  const i = url.indexOf("?");
  return i < 0 ? url : `${url.slice(0, i)}?…`;
}

function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
