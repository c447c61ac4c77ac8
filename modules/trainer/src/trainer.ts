import { createHash } from "node:crypto";
import type { Dataset } from "../../../core/data/dataset";
import { countParams, modelLayout } from "../../../core/engine/models";
import { FlotillaError, isFlotillaError } from "../../../core/errors";
import { decodeTensor } from "../../../core/compress";
import { encodeMessage } from "../../../core/protocol/messages";
import { weightsHash } from "../../../core/tensor/layout";
import {
  defaultLog,
  errorText,
  parsePayload,
  respond,
  updateReported,
  withTimeout,
  type EdgeModuleClient,
  type Log,
  type MethodResponseLike,
  type TwinLike,
} from "../../shared/module-client";
import { frameChunks } from "../../shared/chunks";
import { DEFAULT_CHUNK_BYTES, DEFAULT_DATA_DIR } from "./config";
import { InProcessTrainExecutor, type DataRef, type TrainExecutor, type TrainOutcome } from "./executor";
import { TrainerInference, type InferencePrecision, type InferenceReport } from "./inference";
import { parseRoundOrder, type RoundOrder } from "./round";
import { resolveData } from "./executor";
import { SECAGG_METHODS, SecAggSessions } from "./secagg";
import type { IdentitySigner, SecAggStep } from "../../../core/secagg/types";

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
 * Failures never crash the module: each is reported as status `error` with its code. A failure frame is sent so
 * the cloud need not wait, except for E_MODEL_HASH (the order or the blob cannot be trusted), rounds aborted by the
 * cloud (`abortRound`) and rounds superseded by a newer one.
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
  modelCache?: ModelCache;
  trainExecutor?: TrainExecutor;
  log?: Log;
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
}

export interface TrainerHandle {
  state(): TrainerState;
  /** Starts a round as the `startRound` method does; false if that (jobId, round) was already tried. */
  startRound(order: unknown): boolean;
  /** Resolves when no round is running or waiting. */
  idle(): Promise<void>;
  stop(): Promise<void>;
}

export const REPORTED_KEY = "flotilla";
const ABORTED = "E_ABORTED";
const SUPERSEDED = "E_ROUND_SUPERSEDED";
const DEADLINE = "E_ROUND_DEADLINE";
const STOPPED = "E_TRAINER_STOPPED";
/** Failures after which no failure frame is sent. */
const SILENT = new Set(["E_MODEL_HASH", ABORTED, SUPERSEDED, STOPPED]);

interface Run {
  readonly key: string;
  readonly order: RoundOrder;
  readonly controller: AbortController;
}

export async function startTrainer(opts: TrainerOptions): Promise<TrainerHandle> {
  const { client } = opts;
  const log = opts.log ?? defaultLog;
  const executor = opts.trainExecutor ?? new InProcessTrainExecutor();
  const doFetch: FetchLike = opts.fetch ?? ((url, init) => fetch(url, init));
  const cache: ModelCache = opts.modelCache ?? new Map<string, Promise<Uint8Array>>();
  const dataRef: DataRef = opts.data
    ? { kind: "dataset", dataset: opts.data }
    : { kind: "dir", dir: opts.dataDir ?? DEFAULT_DATA_DIR };
  const outputName = opts.outputName ?? "updates";
  const maxChunkBytes = opts.maxChunkBytes ?? DEFAULT_CHUNK_BYTES;
  const progressIntervalMs = opts.progressIntervalMs ?? 2000;
  const downloadTimeoutMs = opts.downloadTimeoutMs ?? 120_000;
  const twinTimeoutMs = opts.twinTimeoutMs ?? 30_000;
  const sendAttempts = opts.sendAttempts ?? 8;
  const retryDelayMs = opts.retryDelayMs ?? 1000;
  const deviceId = opts.deviceId ?? (await deviceIdOf(client));

  let stopped = false;
  let twin: TwinLike | undefined;
  let online = false;
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
  let reportChain: Promise<void> = Promise.resolve();
  let reconnectTimer: NodeJS.Timeout | undefined;
  let reconnectFailures = 0;
  let opening = false;
  const secagg = new SecAggSessions(deviceId);
  /** Masked inputs being sent (apart from `chain`: a training round of another job must not hold them up). */
  let maskChain: Promise<void> = Promise.resolve();

  // --- reported state ---------------------------------------------------------------------------------------
  const setState = (patch: Partial<TrainerState>): void => {
    state = { ...state, ...patch, updatedAt: new Date().toISOString() };
    pushReported();
  };
  const pushReported = (): void => {
    const snapshot = state;
    reportChain = reportChain.then(async () => {
      if (stopped || !twin || !online) return; // sent again on the next connection
      try {
        await updateReported(twin, { [REPORTED_KEY]: snapshot }, twinTimeoutMs);
      } catch (e) {
        log("warn", `trainer: reporting ${snapshot.status} failed: ${errorText(e)}`);
      }
    });
  };

  // --- ONNX inference ---------------------------------------------------------------------------------------------
  const inference =
    opts.inference === "off"
      ? undefined
      : new TrainerInference(opts.inference ?? "int8", (url) => fetchBlob(url, stopSignal.signal));
  let inferenceChain: Promise<void> = Promise.resolve();
  let localData: { key: string; data: Dataset } | undefined;
  const evaluateOnnx = async (order: RoundOrder): Promise<void> => {
    if (!inference || !order.onnx || stopped) return;
    try {
      await inference.update(order);
      // The local data as this job's model reads it (loaded once per input shape).
      const key = JSON.stringify(order.modelSpec.inputShape);
      if (localData?.key !== key) localData = { key, data: resolveData(dataRef, order.modelSpec) };
      const report = await inference.evaluate(localData.data);
      if (report && !stopped) setState({ inference: report });
    } catch (e) {
      const err = errorOf(e);
      log("warn", `trainer: ONNX inference on round ${order.round - 1}'s model: ${err.code}: ${err.message}`);
      if (!stopped) setState({ inference: { error: err } });
    }
  };

  // --- round orders ---------------------------------------------------------------------------------------------
  const keyOf = (o: { jobId: string; round: number }): string => `${o.jobId}\u0000${o.round}`;

  /** Accepts an order from the twin or the startRound method; returns whether a round was started. */
  const onOrder = (value: unknown, source: string): boolean => {
    if (stopped) return false;
    const order = parseRoundOrder(value); // throws E_ROUND_INVALID
    if (!order) return false;
    const key = keyOf(order);
    if (tried.has(key)) return false;
    if ((latestRound.get(order.jobId) ?? -1) > order.round) {
      log(
        "info",
        `trainer: ignoring round ${order.round} of ${order.jobId} from ${source}: a newer one was seen`,
      );
      return false;
    }
    tried.add(key);
    latestRound.set(order.jobId, order.round);
    secagg.dropJob(order.jobId, order.round); // a newer round supersedes an unfinished secure one
    const run: Run = { key, order, controller: new AbortController() };
    // One round at a time: a newer order supersedes the running and the waiting one.
    active?.controller.abort(new FlotillaError(SUPERSEDED, "a newer round was ordered"));
    pending?.controller.abort(new FlotillaError(SUPERSEDED, "a newer round was ordered"));
    pending = run;
    log("info", `trainer: round ${order.round} of ${order.jobId} ordered through ${source}`);
    chain = chain.then(async () => {
      if (pending === run) pending = undefined;
      active = run;
      try {
        await runRound(run);
      } finally {
        active = undefined;
      }
    });
    return true;
  };

  const onDesiredValue = (value: unknown): void => {
    try {
      onOrder(value, "the module twin");
    } catch (e) {
      log("warn", `trainer: ${errorText(e)}`);
      const o = (value ?? {}) as { jobId?: unknown; round?: unknown };
      setState({
        status: "error",
        jobId: typeof o.jobId === "string" ? o.jobId : null,
        round: typeof o.round === "number" ? o.round : null,
        progress: null,
        error: errorOf(e),
      });
    }
  };
  const onDesired = (delta: Record<string, unknown>): void => {
    if (stopped || typeof delta !== "object" || delta === null || !("flotilla" in delta)) return;
    // The SDK has merged the patch into properties.desired: read the whole object from there.
    onDesiredValue(twin?.properties.desired.flotilla ?? delta.flotilla);
  };
  const onTwinError = (err: Error): void => log("warn", `trainer: twin error: ${errorText(err)}`);

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
    try {
      if (signal.aborted) throw signal.reason;
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
      let lastProgress = Date.now();
      const outcome: TrainOutcome = await executor.run(
        {
          ...base,
          deviceId,
          spec: order.modelSpec,
          weights,
          modelSha256: weightsSha256,
          layoutHash: order.layoutHash,
          config: order.config,
          data: dataRef,
          ...(order.dp ? { dp: order.dp } : {}),
        },
        signal,
        (done, total) => {
          const now = Date.now();
          if (now - lastProgress < progressIntervalMs || signal.aborted) return;
          lastProgress = now;
          setState({ status: "training", progress: total > 0 ? Math.min(1, done / total) : 0 });
        },
      );
      if (signal.aborted) throw signal.reason;
      if (order.deadline > 0 && Date.now() > order.deadline) throw deadlineError;
      const metrics = {
        loss: outcome.metrics.loss,
        accuracy: outcome.metrics.accuracy,
        trainMs: outcome.metrics.trainMs,
      };
      setState({ status: "queued", numSamples: outcome.numSamples, metrics, progress: 1 });
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
        log("info", `trainer: round ${order.round} of ${order.jobId}: keys advertised (secure aggregation)`);
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
      log("info", `trainer: round ${order.round} of ${order.jobId} done (${outcome.numSamples} samples)`);
      // After the update is out (never on the round's critical path): the round's starting model, as ONNX.
      inferenceChain = inferenceChain.then(() => evaluateOnnx(order));
    } catch (e) {
      const err = signal.aborted && isFlotillaError(signal.reason) ? signal.reason : e;
      const { code, message } = errorOf(err);
      log(
        code === SUPERSEDED ? "info" : "warn",
        `trainer: round ${order.round} of ${order.jobId}: ${code}: ${message}`,
      );
      if (!SILENT.has(code)) {
        try {
          const frame = encodeMessage({ type: "failure", ...base, deviceId, code, reason: message });
          // A failure frame is still worth sending after the deadline; abort only if the trainer stops.
          await sendFrame(frame, order, stopSignal.signal);
        } catch (e2) {
          log("warn", `trainer: sending the failure frame failed: ${errorText(e2)}`);
        }
      }
      if (code !== STOPPED) setState({ ...base, status: "error", progress: null, error: { code, message } });
    } finally {
      clearTimeout(deadlineTimer);
    }
  };
  const stopSignal = new AbortController();

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
    let res: Awaited<ReturnType<FetchLike>>;
    try {
      res = await doFetch(url, { signal: timeout });
    } catch (e) {
      throw new FlotillaError("E_MODEL_DOWNLOAD", `GET ${redact(url)} failed: ${errorText(e)}`, { cause: e });
    }
    if (!res.ok) throw new FlotillaError("E_MODEL_DOWNLOAD", `GET ${redact(url)} answered ${res.status}`);
    try {
      return new Uint8Array(await res.arrayBuffer());
    } catch (e) {
      throw new FlotillaError("E_MODEL_DOWNLOAD", `reading ${redact(url)} failed: ${errorText(e)}`, {
        cause: e,
      });
    }
  };

  /** Sends a frame as chunks on the `updates` output, retrying each chunk with backoff. Returns the updateId. */
  const sendFrame = async (
    frame: Uint8Array,
    order: { jobId: string; round: number },
    signal: AbortSignal,
  ): Promise<string> => {
    const { updateId, messages } = frameChunks(
      frame,
      { jobId: order.jobId, round: order.round, deviceId },
      maxChunkBytes,
    );
    for (const msg of messages) {
      for (let attempt = 1; ; attempt++) {
        if (signal.aborted) throw signal.reason;
        try {
          await withTimeout(client.sendOutputEvent(outputName, msg), 60_000, "sendOutputEvent");
          break;
        } catch (e) {
          if (attempt >= sendAttempts)
            throw new FlotillaError(
              "E_UPLOAD",
              `sending ${msg.messageId} failed ${attempt} times: ${errorText(e)}`,
              { cause: e },
            );
          const delay = Math.min(60_000, retryDelayMs * 2 ** (attempt - 1));
          log("warn", `trainer: sending ${msg.messageId} failed (${errorText(e)}); retrying in ${delay} ms`);
          await sleep(delay, signal);
        }
      }
    }
    return updateId;
  };

  // --- link -------------------------------------------------------------------------------------------------------
  const readTwin = async (): Promise<void> => {
    const t = await withTimeout(client.getTwin(), twinTimeoutMs, "getTwin");
    if (stopped) return;
    if (t !== twin) {
      twin?.removeListener("properties.desired", onDesired);
      twin?.removeListener("error", onTwinError);
      twin = t;
      // Rounds already finished before a restart are not trained again.
      const r = t.properties.reported?.[REPORTED_KEY] as Partial<TrainerState> | undefined;
      if (r && typeof r.jobId === "string" && typeof r.round === "number") {
        // A secure round in progress is not retried either: its session (keys, update) died with the process.
        if (["done", "queued", "uploading", "secagg"].includes(r.status as string))
          tried.add(keyOf(r as RoundOrder));
        latestRound.set(r.jobId, Math.max(latestRound.get(r.jobId) ?? -1, r.round));
      }
      t.on("error", onTwinError);
      t.on("properties.desired", onDesired);
    }
    // The SDK re-subscribes after a reconnect but does not re-read the twin: an order set meanwhile is read here.
    onDesiredValue(t.properties.desired.flotilla);
  };

  const connect = async (): Promise<void> => {
    reconnectTimer = undefined;
    if (stopped) return;
    opening = true;
    try {
      await client.open();
      opening = false;
      online = true;
      reconnectFailures = 0;
      await readTwin();
      pushReported();
    } catch (e) {
      opening = false;
      log("warn", `trainer: connecting failed: ${errorText(e)}`);
      scheduleReconnect();
    }
  };
  const scheduleReconnect = (): void => {
    if (stopped || reconnectTimer) return;
    reconnectFailures++;
    const delay = Math.min(60_000, retryDelayMs * 2 ** (reconnectFailures - 1)) * (0.5 + Math.random() / 2);
    reconnectTimer = setTimeout(() => void connect(), delay);
  };
  const onConnect = (): void => {
    if (stopped || opening) return;
    online = true;
    readTwin()
      .then(() => pushReported())
      .catch((e: unknown) => log("warn", `trainer: reading the twin failed: ${errorText(e)}`));
  };
  const onDisconnect = (err?: unknown): void => {
    if (stopped) return;
    online = false;
    log("warn", `trainer: disconnected${err ? `: ${errorText(err)}` : ""}`);
    scheduleReconnect();
  };
  const onError = (err?: unknown): void => {
    if (!stopped) log("warn", `trainer: client error: ${errorText(err)}`);
  };

  client.on("error", onError);
  client.on("disconnect", onDisconnect);
  client.on("connect", onConnect);

  // --- direct methods -----------------------------------------------------------------------------------------------
  const stoppedAnswer = (response?: MethodResponseLike): void =>
    respond(response, 503, { code: STOPPED, message: "the trainer is stopped" }, log);
  client.onMethod("startRound", (request, response) => {
    if (stopped) return stoppedAnswer(response);
    try {
      const payload = parsePayload(request?.payload);
      if (!payload) throw new FlotillaError("E_ROUND_INVALID", "startRound payload must be a JSON object");
      if (!parseRoundOrder(payload))
        throw new FlotillaError("E_ROUND_INVALID", "startRound payload has no jobId");
      const started = onOrder(payload, "startRound");
      respond(
        response,
        started ? 200 : 409,
        started
          ? { accepted: true, jobId: payload.jobId, round: payload.round }
          : {
              accepted: false,
              code: "E_ROUND_SEEN",
              message: "this round was already started (or is older)",
            },
        log,
      );
    } catch (e) {
      respond(response, 400, errorOf(e), log);
    }
  });
  client.onMethod("abortRound", (request, response) => {
    if (stopped) return stoppedAnswer(response);
    const p = parsePayload(request?.payload) ?? {};
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
    respond(response, aborted.length > 0 ? 200 : 404, { aborted: aborted.length > 0, rounds: aborted }, log);
  });
  client.onMethod("predict", (request, response) => {
    if (stopped) return stoppedAnswer(response);
    if (!inference) {
      respond(
        response,
        501,
        { code: "E_PREDICT_DISABLED", message: "inference is off on this trainer" },
        log,
      );
      return;
    }
    inference.predict(parsePayload(request?.payload)).then(
      (answer) => respond(response, 200, answer, log),
      (e) => {
        const err = errorOf(e);
        respond(response, err.code === "E_PREDICT_NO_MODEL" ? 404 : 400, err, log);
      },
    );
  });
  // Secure aggregation, steps 2-4 (./secagg.ts): 200 with the step's answer, 400 {code, message} otherwise.
  for (const { method, step } of SECAGG_METHODS) {
    client.onMethod(method, (request, response) => {
      if (stopped) return stoppedAnswer(response);
      const payload = parsePayload(request?.payload);
      const answer = secagg.answer(step, payload);
      respond(response, answer.status, answer.payload, log);
      const jobId = payload?.jobId;
      const round = payload?.round;
      if (answer.status !== 200) {
        const err = answer.payload as { code: string; message: string };
        log("warn", `trainer: ${method} for ${String(jobId)}/${String(round)}: ${err.code}: ${err.message}`);
        return;
      }
      if (state.jobId === jobId && state.round === round)
        setState({ status: step === "unmask" ? "done" : "secagg", secaggStep: step });
      const frame = answer.frame;
      if (frame) {
        // The masked input leaves on the updates output like any update (after the answer: it may be large).
        maskChain = maskChain.then(async () => {
          try {
            const updateId = await sendFrame(encodeMessage(frame), frame, stopSignal.signal);
            log("info", `trainer: round ${frame.round} of ${frame.jobId}: masked input sent (${updateId})`);
          } catch (e) {
            const err = errorOf(e);
            log(
              "warn",
              `trainer: sending the masked input of ${frame.jobId}/${frame.round}: ${err.code}: ${err.message}`,
            );
            if (state.jobId === frame.jobId && state.round === frame.round)
              setState({ status: "error", error: err });
          }
        });
      }
    });
  }
  client.onMethod("status", (_request, response) => {
    if (stopped) return stoppedAnswer(response);
    respond(response, 200, state, log);
  });
  // The update-queue module tells the trainer when its disk refused an update (modules/update-queue/src/main.ts,
  // holdRefused): this trainer's output succeeded — edgeHub took the message — so this is the only way to learn it.
  // The round's state becomes `error` (E_QUEUE_*), which the cloud sees, until the queue reports it stored.
  let refused: { updateId: string; status: TrainerStatus } | undefined;
  client.onMethod("updateNotStored", (request, response) => {
    if (stopped) return stoppedAnswer(response);
    const p = parsePayload(request?.payload) ?? {};
    const code = typeof p.code === "string" && /^E_[A-Z0-9_]+$/.test(p.code) ? p.code : "E_QUEUE_STORE";
    const detail = typeof p.message === "string" ? p.message.slice(0, 500) : "no detail";
    const ours = typeof p.updateId === "string" && p.updateId === state.updateId;
    log(
      "error",
      `trainer: the update-queue could not store update ${String(p.updateId)}: ${code}: ${detail}`,
    );
    if (ours && state.status !== "error") {
      refused = { updateId: p.updateId as string, status: state.status };
      const held = p.held === true ? "held in memory and retried" : "not held: lost unless redelivered";
      setState({
        status: "error",
        error: { code, message: `the update-queue could not store it (${held}): ${detail}` },
      });
    }
    respond(response, 200, { known: ours }, log);
  });
  client.onMethod("updateStored", (request, response) => {
    if (stopped) return stoppedAnswer(response);
    const p = parsePayload(request?.payload) ?? {};
    const ours = refused !== undefined && p.updateId === refused.updateId && p.updateId === state.updateId;
    if (ours && refused && state.status === "error") setState({ status: refused.status, error: null });
    if (ours) refused = undefined;
    respond(response, 200, { known: ours }, log);
  });

  await connect();

  return {
    state: () => state,
    startRound: (order) => onOrder(order, "startRound"),
    idle: async () => {
      for (let c = chain, m = maskChain; ; c = chain, m = maskChain) {
        await c;
        await m;
        if (c === chain && m === maskChain) break;
      }
      await reportChain;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (reconnectTimer) clearTimeout(reconnectTimer);
      const reason = new FlotillaError(STOPPED, "the trainer is stopping");
      stopSignal.abort(reason);
      active?.controller.abort(reason);
      pending?.controller.abort(reason);
      await chain.catch(() => undefined);
      await maskChain.catch(() => undefined);
      await inferenceChain;
      await inference?.close();
      // The last reported state (e.g. the final `done`) goes out before the client closes.
      await withTimeout(reportChain, 2000, "reported state").catch(() => undefined);
      client.removeListener("connect", onConnect);
      client.removeListener("disconnect", onDisconnect);
      twin?.removeListener("properties.desired", onDesired);
      if (opts.closeClient) {
        try {
          await withTimeout(client.close(), 5000, "client close");
        } catch (e) {
          log("warn", `trainer: closing the client failed: ${errorText(e)}`);
        }
      }
    },
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

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return abortable(new Promise<void>((r) => setTimeout(r, ms).unref?.()), signal);
}
