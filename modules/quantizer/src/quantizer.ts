import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, promises as fsp } from "node:fs";
import { join } from "node:path";
import type { Message } from "azure-iot-device";
import { ErrorFeedback, parseCompression, type CompressionSpec } from "../../../core/compress";
import { FlotillaError, isFlotillaError } from "../../../core/errors";
import { decodeMessage, encodeMessage, type TrainResultMessage } from "../../../core/protocol/messages";
import { compressUpdate, needsSegments, type ResidualStore } from "../../../core/round/update-pipeline";
import {
  frameChunks,
  inputChunkMeta,
  DEFAULT_CHUNK_BYTES,
  MAX_CHUNK_BYTES,
  type ChunkMeta,
  type FrameMeta,
} from "../../shared/chunks";
import { toLogger, type LineLog, type Logger } from "../../../core/log";
import { errorText, type EdgeModuleClient } from "../../shared/module-client";
import { ModuleHost, type MethodHandler } from "../../shared/host";
import type { QuantizerMethod } from "./model";
import { Reassembler } from "../../shared/reassembly";
import { WritableProperties } from "../../shared/writable";
import { CLOUD_DESIRED_KEYS, quantizerProperties } from "./model";
import { DEFAULT_MAX_BYTES } from "./config";
import type { ModuleMetrics } from "../../shared/metrics";
import { defaultQuantizerModuleMetrics, quantizerMetrics } from "./metrics";

/**
 * The quantizer IoT Edge module (docs/iothub-protocol.md), on the edgeHub route trainer → quantizer → update-queue:
 *
 *   FROM /messages/modules/trainer/outputs/updates   INTO BrokeredEndpoint("/modules/quantizer/inputs/updates")
 *   FROM /messages/modules/quantizer/outputs/updates INTO BrokeredEndpoint("/modules/update-queue/inputs/updates")
 *
 * It reassembles the trainer's chunks in memory (modules/shared/reassembly.ts), decodes the FLT1 frame and, when the
 * update is a `result` of a job its module twin configures with a lossy codec chain (core/compress), replaces the
 * raw float32 delta by a compressed envelope (`encoding: "flz"`) through the device-side update pipeline's codec step
 * (core/round/update-pipeline.ts; the trainer ran its delta and DP steps): with a sparsifier through the job's error
 * feedback (the residual persisted in `stateDir/residual-<jobId>.bin`). The new frame goes out
 * on output `updates` in chunks (frameChunks). Failure frames, results of other jobs, deltas already encoded and
 * secure aggregation's device frames (`secagg`, direction up: never compressible) are forwarded unchanged.
 *
 * Operator settings: the writable property maxPendingBytes (./model.ts, IoT Plug and Play; docs/operations.md
 * "Update-queue and quantizer properties"), acknowledged by WritableProperties (modules/shared/writable.ts) and
 * applied at once; FLOTILLA_QUANTIZER_MAX_BYTES is its default.
 *
 * Configuration: module twin desired `flotilla: { jobs: { [jobId]: { compression: "topk:0.01+int8", layoutHash,
 * segments } | null } }` (layoutHash and segments: the job's weight layout, needed by per-tensor codecs).
 * Reported `flotilla: { status, jobs, counters, error, lastError, updatedAt }`. Nothing the cloud or the trainer sends
 * crashes the module: bad chunks and frames are counted, logged on one line with their code and dropped; a bad spec
 * is reported (E_COMPRESS_SPEC) and its job passes through uncompressed.
 *
 * Delivery. Partial updates live in memory only: the module stopping mid-update loses that update (over MQTT edgeHub
 * counts a message as delivered once the SDK has acknowledged it), and the cloud sees the device as missing from the
 * round, as for any dropout; the update-queue downstream is where updates become durable.
 *
 * The link, the module twin, throttled reporting, the `status` method, input dispatch, sending with retry and
 * stopping are the module host's (modules/shared/host.ts); this file is the quantizer's own logic.
 *
 * `startQuantizer` takes an injected client and touches no globals, so a local fleet launcher can run many.
 */

/** The slice of ModuleClient (azure-iot-device 1.18) the quantizer uses: the shared one plus module inputs. */
export interface QuantizerClient extends EdgeModuleClient {
  on(event: "inputMessage", listener: (inputName: string, msg: Message) => void): unknown;
  on(event: "connect", listener: () => void): unknown;
  on(event: "disconnect" | "error", listener: (err?: unknown) => void): unknown;
  removeListener(event: "inputMessage", listener: (inputName: string, msg: Message) => void): unknown;
  removeListener(event: "connect", listener: () => void): unknown;
  removeListener(event: "disconnect" | "error", listener: (err?: unknown) => void): unknown;
  complete(msg: Message): Promise<unknown>;
}

export interface QuantizerOptions {
  client: QuantizerClient;
  /** Directory of the error-feedback residuals (created if missing). */
  stateDir: string;
  /**
   * This device's id, part of the stochastic-rounding seed (with jobId and round). Default: the frame's deviceId,
   * which the trainer sets to its device's id.
   */
  deviceId?: string;
  /** A Logger, or a `(level, message)` callback; default: JSON lines (FLOTILLA_LOG_LEVEL/FORMAT). */
  log?: Logger | LineLog;
  /** Module input the trainer's updates arrive on (default "updates"). */
  inputName?: string;
  /** Module output routed to the update-queue (default "updates"). */
  outputName?: string;
  /** Body bytes per output message (default 255,000). */
  maxChunkBytes?: number;
  /** Bytes of partly received updates held in memory (default 64 MiB): the default of maxPendingBytes. */
  maxBytes?: number;
  /** A partly received update idle for longer than this is given up, ms (default 30 min). */
  partialTtlMs?: number;
  /** Complete updates waiting to be processed; beyond it new ones are dropped (E_QUANT_BUSY; default 16). */
  maxQueued?: number;
  /** Least time between two reported-property patches, ms (default 10,000). */
  reportIntervalMs?: number;
  twinTimeoutMs?: number;
  /** Send attempts per output message before the update is dropped with E_UPLOAD (default 8). */
  sendAttempts?: number;
  /** Delay after the first failed send / reconnect, ms (doubles up to 60 s; default 1000). */
  retryDelayMs?: number;
  /** Close the client in stop() (the container entry owns its client; a launcher may not). */
  closeClient?: boolean;
  /**
   * The quantizer's Prometheus metrics (./metrics.ts, docs/metrics.md). Default: its own registry with IoT Edge's
   * labels from the environment and `deviceId`.
   */
  metrics?: ModuleMetrics;
}

export interface QuantizerCounters {
  /** Complete updates received (reassembled). */
  readonly received: number;
  /** Updates sent compressed. */
  readonly compressed: number;
  /** Updates sent unchanged. */
  readonly passthrough: number;
  /** Frame bytes received / sent. */
  readonly bytesIn: number;
  readonly bytesOut: number;
  /** Malformed chunks and frames, failed sends, residual I/O and codec failures. */
  readonly errors: number;
  /** Residuals not used because their length did not match the update's (or they could not be read). */
  readonly residualsDiscarded: number;
}

/** The reported property `flotilla`. */
export interface QuantizerState {
  readonly status: "running" | "stopped";
  /** Each configured job and the codec chain applied to it ("none" when it passes through). */
  readonly jobs: Readonly<Record<string, string>>;
  readonly counters: QuantizerCounters;
  /** A configuration problem (a bad spec: E_COMPRESS_SPEC), while it lasts. */
  readonly error: { readonly code: string; readonly message: string; readonly jobId?: string } | null;
  /** The last problem of any kind, as `CODE: message`. */
  readonly lastError: string | null;
  /** The writable properties in effect (./model.ts). */
  readonly config: { readonly maxPendingBytes: number };
  readonly updatedAt: string;
}

export interface QuantizerHandle {
  state(): QuantizerState;
  /** Resolves when every update received so far has been processed (sent or dropped). */
  idle(): Promise<void>;
  /** Sends the reported properties now instead of at the next throttle slot. */
  reportNow(): void;
  /** The quantizer's metrics (serve them with serveMetrics, modules/shared/metrics.ts). */
  readonly metrics: ModuleMetrics;
  /**
   * Takes the module's link down (false: its client closes, as when the device loses its network) or brings it
   * back (true): the module host's setLinkEnabled (modules/shared/host.ts). For launchers replaying availability.
   */
  setLinkEnabled(enabled: boolean): Promise<void>;
  stop(): Promise<void>;
}

/** The reported property, and the desired one the configuration comes from. */
export const REPORTED_KEY = "flotilla";
export const DESIRED_KEY = "flotilla";
export const RESIDUAL_PREFIX = "residual-";
const STOPPED = "E_QUANT_STOPPED";

interface JobConfig {
  /** Canonical spec text, or "none" (including a job whose spec is invalid). */
  readonly text: string;
  /** A lossy spec to apply; undefined = pass through. */
  readonly spec?: CompressionSpec;
  /** The job's weight layout: its hash and tensor sizes (the codec's segments, for per-tensor scales). */
  readonly layout?: { readonly hash: string; readonly segments: readonly number[] };
  readonly error?: { readonly code: string; readonly message: string };
}

interface Update {
  readonly frame: Uint8Array;
  /** The chunk properties it came with (undefined for a message carrying a whole frame). */
  readonly meta?: ChunkMeta;
}

/** The residual file of a job: `residual-<jobId>.bin`, or a hash of the id when it is not a safe file name. */
export function residualFileName(jobId: string): string {
  if (/^[A-Za-z0-9_-]{1,100}$/.test(jobId)) return `${RESIDUAL_PREFIX}${jobId}.bin`;
  return `${RESIDUAL_PREFIX}~${createHash("sha256").update(jobId).digest("hex").slice(0, 32)}.bin`;
}

/** Tensors a job's layout may list (a module twin property holds at most 4 KB). */
export const MAX_SEGMENTS = 1000;

/**
 * A job's optional `layoutHash` + `segments` (the weight layout's tensor sizes, in layout order): both or neither.
 * Throws E_QUANT_CONFIG naming the problem.
 */
function parseLayout(jobId: string, v: Record<string, unknown>): JobConfig["layout"] {
  const { layoutHash, segments } = v;
  if ((layoutHash === undefined || layoutHash === null) && (segments === undefined || segments === null))
    return undefined;
  const bad = (why: string): never => {
    throw new FlotillaError("E_QUANT_CONFIG", `job ${jobId}: ${why}`);
  };
  if (typeof layoutHash !== "string" || !/^[0-9a-f]{64}$/.test(layoutHash))
    bad("layoutHash must be 64 lowercase hex digits (with segments)");
  if (
    !Array.isArray(segments) ||
    segments.length === 0 ||
    segments.length > MAX_SEGMENTS ||
    !segments.every((x) => Number.isSafeInteger(x) && (x as number) > 0)
  )
    bad(`segments must be 1 to ${MAX_SEGMENTS} positive integers (the layout's tensor sizes)`);
  return { hash: layoutHash as string, segments: [...(segments as number[])] };
}

export async function startQuantizer(opts: QuantizerOptions): Promise<QuantizerHandle> {
  const { client, stateDir } = opts;
  const log = toLogger(opts.log, "quantizer");
  const inputName = opts.inputName ?? "updates";
  const outputName = opts.outputName ?? "updates";
  const maxChunkBytes = opts.maxChunkBytes ?? DEFAULT_CHUNK_BYTES;
  const maxQueued = opts.maxQueued ?? 16;
  const reportIntervalMs = opts.reportIntervalMs ?? 10_000;
  const twinTimeoutMs = opts.twinTimeoutMs ?? 30_000;
  const sendAttempts = opts.sendAttempts ?? 8;
  if (!Number.isSafeInteger(maxChunkBytes) || maxChunkBytes < 1 || maxChunkBytes > MAX_CHUNK_BYTES)
    throw new FlotillaError("E_QUANT_CONFIG", `maxChunkBytes must be from 1 to ${MAX_CHUNK_BYTES}`);
  try {
    mkdirSync(stateDir, { recursive: true });
  } catch (e) {
    throw new FlotillaError("E_QUANT_STATE_DIR", `cannot create ${stateDir}: ${errorText(e)}`);
  }
  const moduleMetrics = opts.metrics ?? defaultQuantizerModuleMetrics(opts.deviceId);
  const metered = quantizerMetrics(moduleMetrics);
  const reassembler = new Reassembler({
    maxBytes: opts.maxBytes ?? DEFAULT_MAX_BYTES,
    ttlMs: opts.partialTtlMs,
  });

  let jobs = new Map<string, JobConfig>();
  /** Jobs of the last well-formed configuration: a job leaving it is removed (and its residual deleted). */
  let knownJobs = new Set<string>();
  /** Jobs in the last reported `jobs` (a removed one must be reported as null: reported patches merge). */
  let reportedJobs = new Set<string>();
  const residuals = new Map<string, ErrorFeedback>();
  /** Jobs whose residual file was read (or found missing) since start or since their residual was reset. */
  const residualRead = new Set<string>();
  const counters = {
    received: 0,
    compressed: 0,
    passthrough: 0,
    bytesIn: 0,
    bytesOut: 0,
    errors: 0,
    residualsDiscarded: 0,
  };
  let lastError: string | null = null;
  let configError: QuantizerState["error"] = null;
  let status: QuantizerState["status"] = "running";
  let updatedAt = new Date().toISOString();

  /** Updates are processed one at a time, in arrival order; residual file changes go through the same chain. */
  let chain: Promise<void> = Promise.resolve();
  let queued = 0;

  // Updates wait for the first twin read (their job's configuration), at most twinTimeoutMs.
  let configured!: () => void;
  const configReady = new Promise<void>((resolve) => (configured = resolve));
  const configTimer = setTimeout(() => configured(), twinTimeoutMs);
  configTimer.unref();
  let firstTwinApplied = false;

  const residualPath = (jobId: string): string => join(stateDir, residualFileName(jobId));

  const state = (): QuantizerState => ({
    status,
    jobs: Object.fromEntries([...jobs].map(([id, j]) => [id, j.text])),
    counters: { ...counters },
    error: configError,
    lastError,
    config: { maxPendingBytes: reassembler.maxBytes },
    updatedAt,
  });

  const problem = (e: unknown, context: string): void => {
    const { code, message } = errorOf(e);
    counters.errors++;
    metered.errors.inc({ code });
    lastError = `${code}: ${message}`;
    log.warn(`${context}: ${code}: ${oneLine(message)}`, { code });
    changed();
  };

  // --- reported state (sent by the host, throttled) ------------------------------------------------------------------
  /** The whole state; a job no longer configured is reported as null (reported patches merge). */
  const reported = (): Record<string, unknown> => {
    const snapshot = state();
    const jobsPatch: Record<string, string | null> = { ...snapshot.jobs };
    for (const id of reportedJobs) if (!(id in jobsPatch)) jobsPatch[id] = null;
    return { [REPORTED_KEY]: { ...snapshot, jobs: jobsPatch } };
  };
  const onReported = (patch: Record<string, unknown>): void => {
    const jobsSent = (patch[REPORTED_KEY] as { jobs: Record<string, string | null> }).jobs;
    reportedJobs = new Set(Object.keys(jobsSent).filter((id) => jobsSent[id] !== null));
  };
  function changed(): void {
    updatedAt = new Date().toISOString();
    host.changed();
  }

  // --- configuration (module twin) -----------------------------------------------------------------------------------
  const parseJob = (jobId: string, value: unknown): JobConfig => {
    const text = (value as { compression?: unknown } | null)?.compression;
    try {
      if (typeof value !== "object" || value === null || Array.isArray(value) || typeof text !== "string")
        throw new FlotillaError("E_COMPRESS_SPEC", `job ${jobId}: expected { compression: "<spec>" }`);
      const spec = parseCompression(text);
      if (spec.lossless || spec.stages.length === 0) return { text: spec.text };
      const layout = parseLayout(jobId, value as Record<string, unknown>);
      return { text: spec.text, spec, ...(layout ? { layout } : {}) };
    } catch (e) {
      const { code, message } = errorOf(e);
      return {
        text: "none",
        error: { code: code === "E_QUANT_INTERNAL" ? "E_COMPRESS_SPEC" : code, message },
      };
    }
  };

  /**
   * Applies the whole desired `flotilla` (the SDK merges patches into properties.desired). Returns false when it is
   * malformed as a whole: then nothing is compressed, but no residual is deleted (a typo must not lose them).
   */
  const applyDesired = (desired: Record<string, unknown> | undefined): boolean => {
    if (host.stopped) return false;
    const value = desired?.[DESIRED_KEY];
    let raw: unknown =
      typeof value === "object" && value !== null ? (value as { jobs?: unknown }).jobs : undefined;
    const next = new Map<string, JobConfig>();
    let shapeError: QuantizerState["error"] = null;
    if (value !== undefined && value !== null && (typeof value !== "object" || Array.isArray(value))) {
      shapeError = { code: "E_QUANT_CONFIG", message: "desired flotilla must be an object { jobs }" };
      raw = undefined;
    } else if (raw !== undefined && raw !== null && (typeof raw !== "object" || Array.isArray(raw))) {
      shapeError = { code: "E_QUANT_CONFIG", message: "desired flotilla.jobs must be an object" };
      raw = undefined;
    }
    for (const [jobId, v] of Object.entries((raw ?? {}) as Record<string, unknown>)) {
      if (jobId.startsWith("$") || v === null || v === undefined) continue; // null: the job is removed
      next.set(jobId, parseJob(jobId, v));
    }
    const before = jobs;
    jobs = next;
    for (const [jobId, job] of next) {
      const old = before.get(jobId);
      if (old && old.text === job.text && old.error?.message === job.error?.message) continue;
      if (job.error) {
        log.warn(`job ${jobId}: ${job.error.code}: ${oneLine(job.error.message)}; passing through`, {
          jobId,
          code: job.error.code,
        });
        lastError = `${job.error.code}: ${job.error.message}`;
      } else {
        log.info(`job ${jobId}: ${job.text}`, { jobId, compression: job.text });
      }
    }
    if (!shapeError) {
      for (const jobId of knownJobs) if (!next.has(jobId)) removeJob(jobId);
      knownJobs = new Set(next.keys());
    }
    const bad = [...next].find(([, j]) => j.error);
    configError = shapeError ?? (bad ? { ...bad[1].error!, jobId: bad[0] } : null);
    if (shapeError) {
      lastError = `${shapeError.code}: ${shapeError.message}`;
      log.warn(lastError, { code: shapeError.code });
    }
    changed();
    return !shapeError;
  };

  /** Forgets a job and deletes its residual, in turn with the updates already queued (which may still save it). */
  const removeJob = (jobId: string): void => {
    log.info(`job ${jobId} removed`, { jobId });
    enqueueWork(async () => {
      if (jobs.has(jobId)) return; // configured again meanwhile: its residual stays
      residuals.delete(jobId);
      residualRead.delete(jobId);
      await deleteFile(residualPath(jobId));
    });
  };

  /** After the first full twin read: residual files of jobs no longer configured (removed while we were down). */
  const removeOrphans = (): void => {
    enqueueWork(async () => {
      let names: string[];
      try {
        names = await fsp.readdir(stateDir);
      } catch (e) {
        return problem(
          new FlotillaError("E_QUANT_RESIDUAL", `listing ${stateDir}: ${errorText(e)}`),
          "cleanup",
        );
      }
      const keep = new Set([...jobs.keys()].map(residualFileName));
      for (const name of names) {
        const temp = name.startsWith(RESIDUAL_PREFIX) && name.includes(".bin.tmp-");
        if (temp || (name.startsWith(RESIDUAL_PREFIX) && name.endsWith(".bin") && !keep.has(name))) {
          log.info(`deleting ${name} (no such job configured)`);
          await deleteFile(join(stateDir, name));
        }
      }
    });
  };

  const deleteFile = async (file: string): Promise<void> => {
    try {
      await fsp.rm(file, { force: true });
    } catch (e) {
      problem(new FlotillaError("E_QUANT_RESIDUAL", `deleting ${file}: ${errorText(e)}`), "residual");
    }
  };

  // --- residuals -----------------------------------------------------------------------------------------------------
  const discardResidual = (jobId: string, why: string): void => {
    counters.residualsDiscarded++;
    log.warn(`discarding the residual of job ${jobId}: ${oneLine(why)}`, { jobId });
    changed();
  };

  /** The job's error feedback for a delta of `length` values: in memory, else from its file, else zeros. */
  const residualFor = async (jobId: string, length: number): Promise<ErrorFeedback> => {
    let ef = residuals.get(jobId);
    if (ef && ef.residual.length !== length) {
      discardResidual(jobId, `it has ${ef.residual.length} values, the update ${length}`);
      ef = undefined;
    }
    if (!ef && !residualRead.has(jobId)) {
      residualRead.add(jobId);
      let bytes: Uint8Array | undefined;
      try {
        bytes = await fsp.readFile(residualPath(jobId));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ENOENT")
          discardResidual(jobId, `reading ${residualPath(jobId)}: ${errorText(e)}`);
      }
      if (bytes) {
        try {
          ef = ErrorFeedback.fromBytes(
            new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength),
            length,
          );
          log.info(`job ${jobId}: residual of ${length} values loaded`, { jobId, length });
        } catch (e) {
          discardResidual(jobId, errorText(e));
        }
      }
    }
    ef ??= new ErrorFeedback(length);
    residuals.set(jobId, ef);
    return ef;
  };

  /** Writes a residual atomically: a temp file, fsync, rename over the old one, fsync of the directory. */
  const saveResidual = async (jobId: string, ef: ErrorFeedback): Promise<void> => {
    const file = residualPath(jobId);
    const temp = `${file}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
    try {
      const fh = await fsp.open(temp, "w", 0o600);
      try {
        await fh.writeFile(ef.toBytes());
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fsp.rename(temp, file);
    } catch (e) {
      await fsp.rm(temp, { force: true }).catch(() => undefined);
      throw new FlotillaError("E_QUANT_RESIDUAL", `saving the residual of job ${jobId}: ${errorText(e)}`);
    }
    try {
      const dir = await fsp.open(stateDir, "r");
      try {
        await dir.sync(); // the rename itself survives a power cut
      } finally {
        await dir.close();
      }
    } catch {
      // Not every file system lets a directory be fsynced; the data itself is synced.
    }
  };

  /**
   * The residual store of the update pipeline (core/round/update-pipeline.ts): residuals in memory, read from their
   * file on first use and written to it before the update is sent. A residual that cannot be saved is reset to zeros
   * (its file removed) rather than kept diverging from the disk.
   */
  const fileResiduals: ResidualStore = {
    load: residualFor,
    save: async (jobId, ef) => {
      try {
        await saveResidual(jobId, ef);
      } catch (e) {
        problem(e, `job ${jobId}`);
        residuals.set(jobId, new ErrorFeedback(ef.length));
        await deleteFile(residualPath(jobId));
      }
    },
    discard: (jobId) => {
      // The in-memory residual may be half-updated: read the file (the state before this update) next time.
      residuals.delete(jobId);
      residualRead.delete(jobId);
    },
  };

  // --- updates -------------------------------------------------------------------------------------------------------
  function enqueueWork(work: () => Promise<void>): void {
    chain = chain.then(work).catch((e: unknown) => problem(e, "internal"));
  }

  const enqueueUpdate = (u: Update): void => {
    if (queued >= maxQueued) {
      problem(
        new FlotillaError(
          "E_QUANT_BUSY",
          `${queued} updates are waiting to be sent; dropping one of ${u.frame.byteLength} bytes`,
        ),
        "input",
      );
      return;
    }
    queued++;
    counters.received++;
    counters.bytesIn += u.frame.byteLength;
    metered.bytesIn.inc(u.frame.byteLength);
    changed();
    enqueueWork(async () => {
      try {
        await processUpdate(u);
      } finally {
        queued--;
      }
    });
  };

  const processUpdate = async (u: Update): Promise<void> => {
    await configReady;
    if (host.stopped) {
      log.warn(`an update of ${u.frame.byteLength} bytes was not sent: the quantizer stopped`);
      return;
    }
    let msg;
    try {
      msg = decodeMessage(u.frame);
    } catch (e) {
      return problem(new FlotillaError("E_QUANT_FRAME", `not a valid FLT1 frame (${errorText(e)})`), "input");
    }
    // Secure aggregation's device frames (key advertisement, masked input) pass through untouched: the masked
    // vector is a ring element per value that any codec would destroy (docs/iothub-protocol.md).
    if (msg.type === "train" || (msg.type === "secagg" && msg.direction !== "up"))
      return problem(
        new FlotillaError("E_QUANT_FRAME", `frame type '${msg.type}' is not an update`),
        "input",
      );
    const meta: FrameMeta = { jobId: msg.jobId, round: msg.round, deviceId: msg.deviceId };
    if (u.meta) {
      for (const k of ["jobId", "round", "deviceId"] as const) {
        if (u.meta[k] !== meta[k])
          return problem(
            new FlotillaError(
              "E_QUANT_META_MISMATCH",
              `chunk property ${k}=${String(u.meta[k])} but the frame says ${String(meta[k])}`,
            ),
            "input",
          );
      }
    }
    let out = u.frame;
    let compressed = false;
    const job = msg.type === "result" ? jobs.get(msg.jobId) : undefined;
    if (msg.type === "result" && job?.spec && msg.delta instanceof Float32Array) {
      try {
        const t0 = performance.now();
        out = await compress(msg as TrainResultMessage & { delta: Float32Array }, {
          ...job,
          spec: job.spec,
        });
        metered.encodeSeconds.observe((performance.now() - t0) / 1000);
        compressed = true;
      } catch (e) {
        // The update still counts: it goes out raw (the aggregator takes both).
        problem(e, `job ${msg.jobId} round ${msg.round}: compressing failed, sending it raw`);
      }
    }
    try {
      await sendFrame(out, meta);
    } catch (e) {
      if (isFlotillaError(e) && e.code === STOPPED)
        return log.warn(`job ${meta.jobId} round ${meta.round}: ${e.message}`, { ...meta, code: e.code });
      return problem(e, `job ${meta.jobId} round ${meta.round}`);
    }
    if (compressed) counters.compressed++;
    else counters.passthrough++;
    counters.bytesOut += out.byteLength;
    metered.bytesOut.inc(out.byteLength);
    metered.updates.inc({ outcome: compressed ? "compressed" : "passthrough" });
    if (compressed && out.byteLength > 0) {
      const ratio = u.frame.byteLength / out.byteLength;
      metered.lastRatio.set(ratio);
      metered.ratio.observe(ratio);
    }
    changed();
  };

  /**
   * The result frame with its delta compressed. With a sparsifier the job's residual is updated and saved BEFORE
   * the frame is sent. Exactly-once is impossible across a crash here, so the order picks the safe failure:
   * - saved, then crash before (or while) sending: the update is lost (a dropout the cloud already tolerates), and
   *   what it transmitted is counted as transmitted by the residual: at most once, never twice;
   * - the other order (send, then save) would, on a crash in between, reload the old residual and add its
   *   error-feedback mass to the next round's update again: sent twice, a bias the aggregate cannot detect.
   * The codec is step 3 of the device-side update pipeline (core/round/update-pipeline.ts, compressUpdate: the same
   * seed rule and segments as the simulator's devices); per-tensor codecs (`int8:tensor`) take the job's segments
   * from the module twin and send the update raw (E_QUANT_LAYOUT) when they do not fit it.
   */
  const compress = async (
    msg: TrainResultMessage & { delta: Float32Array },
    job: JobConfig & { spec: CompressionSpec },
  ): Promise<Uint8Array> => {
    // The codec's segments: the job's layout, when the update follows it (the trainer checked the layout hash).
    const layout = job.layout;
    const fits =
      layout !== undefined &&
      layout.hash === msg.layoutHash &&
      layout.segments.reduce((a, b) => a + b, 0) === msg.delta.length;
    if (needsSegments(job.spec) && !fits)
      throw new FlotillaError(
        "E_QUANT_LAYOUT",
        `'${job.text}' scales per tensor and needs the job's layout: ` +
          (layout
            ? `the configured one (${layout.hash.slice(0, 12)}, ${layout.segments.length} tensors) does not fit ` +
              `the update (${msg.layoutHash.slice(0, 12)}, ${msg.delta.length} values)`
            : "the module twin gives no layoutHash and segments for the job"),
      );
    let bytes: Uint8Array;
    try {
      bytes = await compressUpdate(
        msg.delta,
        job.spec,
        {
          jobId: msg.jobId,
          round: msg.round,
          deviceId: opts.deviceId ?? msg.deviceId,
          layoutHash: msg.layoutHash,
          ...(fits ? { segments: layout.segments } : {}),
        },
        fileResiduals,
      );
    } catch (e) {
      throw new FlotillaError("E_QUANT_ENCODE", `compression failed: ${errorText(e)}`);
    }
    return encodeMessage({ ...msg, delta: { encoding: "flz", bytes } });
  };

  /** Sends a frame as chunks on the output, each retried with backoff (the host's sendWithRetry). */
  const sendFrame = async (frame: Uint8Array, meta: FrameMeta): Promise<void> => {
    const { messages } = frameChunks(frame, meta, maxChunkBytes);
    await host.sendWithRetry(outputName, messages, { failCode: "E_UPLOAD", attempts: sendAttempts });
  };

  const onInput = (msg: Message): void => {
    try {
      const body = msg.getBytes();
      const meta = inputChunkMeta(msg);
      if (!meta) {
        // A whole frame in one message (no chunk properties): a plain copy, never a view of a pooled Buffer.
        if (!body || body.byteLength === 0) throw new FlotillaError("E_QUANT_CHUNK", "an empty message");
        enqueueUpdate({ frame: new Uint8Array(body) });
      } else {
        const r = reassembler.add(body, meta);
        if (r.status === "complete") enqueueUpdate({ frame: r.frame, meta: r.meta });
      }
    } catch (e) {
      problem(e, "input");
    }
    host.complete(msg);
  };

  // --- operator → module: the writable properties (./model.ts) --------------------------------------------------------
  // maxPendingBytes applies at once: partial updates beyond a lowered bound are given up (oldest first, counted as
  // evicted), and an update larger than it is refused (E_QUANT_TOO_LARGE).
  const props = new WritableProperties({
    specs: quantizerProperties({ maxPendingBytes: reassembler.maxBytes }),
    cloudKeys: CLOUD_DESIRED_KEYS,
    reservedKeys: [REPORTED_KEY],
    ack: (outcomes, version) => host.ackDesired(outcomes, version),
    apply: (name, value) => {
      if (name !== "maxPendingBytes") return;
      const evicted = reassembler.setMaxBytes(value);
      if (evicted > 0)
        log.warn(`maxPendingBytes ${value}: gave up ${evicted} partly received update(s) to fit`, {
          evicted,
        });
      changed();
    },
    log: (level, line) => (level === "warn" ? log.warn(line) : log.info(line)),
  });

  // --- the host: link, twin, reporting, methods, inputs ----------------------------------------------------------------
  const host: ModuleHost = new ModuleHost({
    name: "quantizer",
    client,
    log,
    stoppedCode: STOPPED,
    internalCode: "E_QUANT_INTERNAL",
    twinTimeoutMs,
    reportIntervalMs,
    retryDelayMs: opts.retryDelayMs,
    closeClient: opts.closeClient,
    metrics: moduleMetrics,
    reportedKeys: [REPORTED_KEY],
    hooks: {
      onTwin: (twin, fresh) => {
        if (fresh) {
          const r = twin.properties.reported?.[REPORTED_KEY] as { jobs?: unknown } | undefined;
          if (r && typeof r.jobs === "object" && r.jobs !== null)
            for (const id of Object.keys(r.jobs)) reportedJobs.add(id);
        }
        // Read at every connection: changes made while the link was down are applied here.
        if (!host.stopped) props.onTwin(twin.properties.desired, twin.properties.reported);
        const wellFormed = applyDesired(twin.properties.desired);
        if (!firstTwinApplied) {
          firstTwinApplied = true;
          if (wellFormed) removeOrphans();
          configured();
        }
      },
      onDesiredPatch: (delta, twin) => {
        if (!host.stopped) props.onPatch(delta);
        applyDesired(twin.properties.desired);
      },
      reported,
      onReported,
    },
    methods: { status: () => ({ status: 200, payload: state() }) } satisfies Record<
      QuantizerMethod,
      MethodHandler
    >,
    inputs: { [inputName]: onInput },
  });
  await host.start();

  return {
    state,
    metrics: moduleMetrics,
    idle: async () => {
      for (let c = chain; ; c = chain) {
        await c;
        if (c === chain) break;
      }
      await host.reportsSettled();
    },
    reportNow: () => host.reportNow(),
    setLinkEnabled: (enabled: boolean) => host.setLinkEnabled(enabled),
    stop: () =>
      host.stop({
        drain: async () => {
          clearTimeout(configTimer);
          configured(); // queued updates are dropped, not processed
          await chain.catch(() => undefined);
          reassembler.clear();
          status = "stopped";
          updatedAt = new Date().toISOString();
        },
        finalReport: true, // the last state goes out before the client closes
      }),
  };
}

function errorOf(e: unknown): { code: string; message: string } {
  if (isFlotillaError(e)) return { code: e.code, message: e.message };
  const code = (e as { code?: unknown })?.code;
  return {
    code: typeof code === "string" && code.startsWith("E_") ? code : "E_QUANT_INTERNAL",
    message: e instanceof Error ? e.message : String(e),
  };
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, " ");
}
