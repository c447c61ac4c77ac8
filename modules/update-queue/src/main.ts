import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { Message, ModuleClient } from "azure-iot-device";
import { fail, isFlotillaError } from "../../../core/errors";
import { backoffDelay, checkBackoff, type BackoffOptions } from "./backoff";
import { loadConfig, type Env, type UpdateQueueConfig } from "./config";
import { WritableProperties, type ValuesOf } from "../../shared/writable";
import { CLOUD_DESIRED_KEYS, updateQueueProperties, type UpdateQueueProperties } from "./model";
import {
  deriveUpdateId,
  frameMeta,
  Outbox,
  sha256,
  type OutboxChunk,
  type OutboxStats,
  type QuarantineReport,
} from "./outbox";
import { Sender } from "./sender";
import { chunkMessage, inputChunkMeta } from "../../shared/chunks";
import { toLogger, type LineLog, type Logger } from "../../../core/log";
import {
  createModuleClient as createSharedModuleClient,
  errorText as message,
} from "../../shared/module-client";
import { ModuleHost, runModule } from "../../shared/host";
import type { MethodHandler } from "../../shared/host";
import { MODEL_ID, type UpdateQueueMethod } from "./model";
import type { ModuleMetrics } from "../../shared/metrics";
import { defaultUpdateQueueModuleMetrics, updateQueueMetrics } from "./metrics";
import { alsoClosing, containerModuleMetrics, serveContainerMetrics } from "../../shared/metrics-entry";

/**
 * The update-queue IoT Edge module. edgeHub routes the trainer's updates here through the quantizer
 * (FROM /messages/modules/quantizer/outputs/updates INTO BrokeredEndpoint("/modules/update-queue/inputs/updates"));
 * each one is stored in the outbox before the input message is completed, then sent as chunks on the `upstream`
 * output (FROM /messages/modules/update-queue/outputs/* INTO $upstream) until the cloud acknowledges it through
 * the module twin (desired `acks`) or the `ack` direct method. An update the disk refuses is held, retried and
 * reported, and the trainer told (`holdRefused`); a damaged queue file is moved aside and reported (./queue-file.ts).
 *
 * The link (reconnect with `reconnectBackoff`), the module twin (read again at every connection, a failed read
 * retried), throttled reporting, the `ack`/`status` methods, input dispatch and stopping are the module host's
 * (modules/shared/host.ts); this file is the queue's own logic. Sending is the Sender's (./sender.ts: an outbox
 * drains with its own backoff, and resends after a reconnect).
 *
 * Operator settings are the module twin's writable properties (./model.ts, IoT Plug and Play; docs/operations.md
 * "Update-queue and quantizer properties"), validated and acknowledged by WritableProperties
 * (modules/shared/writable.ts): maxChunkBytes, resendAfterMs, capacityBytes, retentionHours, meteredLink and
 * meteredMaxUploadBytes, each applied at once. The Function's own desired keys (`acks`, `openRounds`) are read here.
 *
 * `startUpdateQueue` takes an injected client and touches no globals (no process.env, signals or exit), so a local
 * fleet launcher can run many queues in one process; `start` (with runModule) is the container entry point.
 */

/** The slice of ModuleClient (azure-iot-device 1.18) the queue uses; a launcher or test may pass a look-alike. */
export interface UpdateQueueClient {
  open(): Promise<unknown>;
  close(): Promise<unknown>;
  on(event: "inputMessage", listener: (inputName: string, msg: Message) => void): unknown;
  on(event: "connect", listener: () => void): unknown;
  on(event: "disconnect" | "error", listener: (err?: unknown) => void): unknown;
  removeListener(event: "inputMessage", listener: (inputName: string, msg: Message) => void): unknown;
  removeListener(event: "connect", listener: () => void): unknown;
  removeListener(event: "disconnect" | "error", listener: (err?: unknown) => void): unknown;
  complete(msg: Message): Promise<unknown>;
  sendOutputEvent(outputName: string, msg: Message): Promise<unknown>;
  getTwin(): Promise<TwinLike>;
  onMethod(
    methodName: string,
    callback: (request?: MethodRequestLike, response?: MethodResponseLike) => void,
  ): void;
  /** Module-to-module direct method through edgeHub (ModuleClient.invokeMethod; only on IoT Edge). */
  invokeMethod?(deviceId: string, moduleId: string, params: InvokeMethodParams): Promise<unknown>;
}

export interface InvokeMethodParams {
  methodName: string;
  payload: unknown;
  responseTimeoutInSeconds?: number;
  connectTimeoutInSeconds?: number;
}

export interface TwinLike {
  properties: {
    desired: Record<string, unknown>;
    /** The SDK types this as an index signature; at run time it has `update(patch, done)`. */
    reported: Record<string, unknown>;
  };
  on(event: "properties.desired", listener: (delta: Record<string, unknown>) => void): unknown;
  on(event: "error", listener: (err: Error) => void): unknown;
  removeListener(event: "properties.desired", listener: (delta: Record<string, unknown>) => void): unknown;
  removeListener(event: "error", listener: (err: Error) => void): unknown;
}

export interface MethodRequestLike {
  payload?: unknown;
}

export interface MethodResponseLike {
  send(status: number, payload?: unknown): Promise<void>;
}

export type LogLevel = "info" | "warn" | "error";

export interface UpdateQueueOptions {
  client: UpdateQueueClient;
  /** Directory of the queue file (created if missing). */
  dir: string;
  maxChunkBytes?: number;
  resendAfterMs?: number;
  maxBytes?: number;
  /** Module input the trainer's updates arrive on. */
  inputName?: string;
  /** Module output routed INTO $upstream. */
  outputName?: string;
  /** Updates sent at once. */
  concurrency?: number;
  /** Least time between two reported-property patches, in ms. */
  reportIntervalMs?: number;
  /** Give up waiting for a twin GET after this long, in ms (the SDK itself never times out). */
  twinTimeoutMs?: number;
  sendTimeoutMs?: number;
  /** Backoff between reconnect attempts. */
  reconnectBackoff?: BackoffOptions;
  /** Backoff after a failed send. */
  sendBackoff?: BackoffOptions;
  /** Close the client in stop() (the container entry owns its client; a launcher may not). */
  closeClient?: boolean;
  /** Backoff between attempts to store an update the disk refused (see `onInput`). */
  storeBackoff?: BackoffOptions;
  /** Bytes of refused updates held in memory for another try (default 32 MiB). */
  maxHeldBytes?: number;
  /** The module told (direct method `updateNotStored`/`updateStored`) when an update cannot be stored. */
  trainerModuleId?: string;
  /** This device's id, for the module-to-module call (default: the update's deviceId). */
  deviceId?: string;
  /** A Logger, or a `(level, message)` callback; default: JSON lines (FLOTILLA_LOG_LEVEL/FORMAT). */
  log?: Logger | LineLog;
  random?: () => number;
  /** Clock in ms since the epoch (the outbox's times, the resend timer, retention); injectable for tests. */
  now?: () => number;
  /** How often updates older than `retentionHours` are looked for, ms (default 60,000; also at each change). */
  retentionSweepMs?: number;
  /**
   * The queue's Prometheus metrics (./metrics.ts, docs/metrics.md). Default: its own registry with IoT Edge's
   * labels from the environment and `deviceId`.
   */
  metrics?: ModuleMetrics;
}

export interface UpdateQueueStatus extends OutboxStats {
  readonly online: boolean;
  /** Input messages that could not be stored because they were not valid updates. */
  readonly invalidInputs: number;
  /** Valid updates the disk refused, held in memory (not completed) until a retry stores them, and their bytes. */
  readonly unstored: number;
  readonly unstoredBytes: number;
  /** Valid updates refused by the disk that could not be held either (the memory bound): lost unless redelivered. */
  readonly lostInputs: number;
  /** The last damaged queue file moved aside (a fresh queue was started), or null. */
  readonly quarantined: QuarantineReport | null;
  readonly lastError: string | null;
  /**
   * Updates not yet sent completely that are larger than meteredMaxUploadBytes while meteredLink is true: kept,
   * sent when the link is no longer metered (or the limit rises); and their bytes.
   */
  readonly deferred: number;
  readonly deferredBytes: number;
  /** The writable properties in effect (./model.ts). */
  readonly config: Readonly<ValuesOf<UpdateQueueProperties>>;
}

export interface UpdateQueueHandle {
  readonly outbox: Outbox;
  readonly sender: Sender;
  /** The queue's metrics (serve them with serveMetrics, modules/shared/metrics.ts). */
  readonly metrics: ModuleMetrics;
  status(): UpdateQueueStatus;
  /** Sends the reported properties now instead of at the next throttle slot. */
  reportNow(): void;
  /** Drops the updates older than retentionHours now (also done every retentionSweepMs); returns how many. */
  expireOld(): number;
  /**
   * Takes the module's link down (false: its client closes, as when the device loses its network) or brings it
   * back (true): the module host's setLinkEnabled (modules/shared/host.ts). For launchers replaying availability.
   */
  setLinkEnabled(enabled: boolean): Promise<void>;
  stop(): Promise<void>;
}

export const QUEUE_FILE = "outbox.sqlite";
/** The outbox setting holding the metered-link policy in effect ({ on, maxUploadBytes }). */
const METERED_SETTING = "metered";
/** Reported property holding the queue's status. */
export const REPORTED_KEY = "updateQueue";

const DEFAULTS = {
  inputName: "updates",
  outputName: "upstream",
  reportIntervalMs: 10_000,
  twinTimeoutMs: 30_000,
  reconnectBackoff: { initialMs: 1000, maxMs: 60_000, factor: 2 },
  storeBackoff: { initialMs: 1000, maxMs: 60_000, factor: 2 },
  maxHeldBytes: 32 * 1024 * 1024, // of the module's 256 MiB memory limit (deployment-manifests/README.md)
  trainerModuleId: "trainer",
};

/** An input message the disk refused, held for another try; its message is completed only once it is stored. */
interface HeldInput {
  readonly key: string;
  readonly msg: Message;
  readonly bytes: number;
  readonly updateId: string;
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
  readonly store: () => void;
}

/** Input errors a redelivery cannot fix: the message is completed (dropped) and counted. */
const INPUT_ERRORS = new Set([
  "E_QUEUE_INVALID",
  "E_QUEUE_FRAME",
  "E_QUEUE_META_MISMATCH",
  "E_QUEUE_TOO_LARGE",
  "E_QUEUE_CONFLICT",
  "E_QUEUE_CHECKSUM",
]);

export async function startUpdateQueue(opts: UpdateQueueOptions): Promise<UpdateQueueHandle> {
  const { client } = opts;
  const inputName = opts.inputName ?? DEFAULTS.inputName;
  const outputName = opts.outputName ?? DEFAULTS.outputName;
  const log = toLogger(opts.log, "update-queue");
  const random = opts.random ?? Math.random;
  const reconnectBackoff = checkBackoff(
    opts.reconnectBackoff ?? DEFAULTS.reconnectBackoff,
    "reconnect backoff",
  );
  const twinTimeoutMs = opts.twinTimeoutMs ?? DEFAULTS.twinTimeoutMs;
  const storeBackoff = checkBackoff(opts.storeBackoff ?? DEFAULTS.storeBackoff, "store backoff");
  const maxHeldBytes = opts.maxHeldBytes ?? DEFAULTS.maxHeldBytes;
  const trainerModuleId = opts.trainerModuleId ?? DEFAULTS.trainerModuleId;

  try {
    // 0700: the queue holds model updates trained on the device's private data (the files are 0600: queue-file.ts).
    mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    fail("E_QUEUE_OPEN", `cannot create queue directory ${opts.dir}: ${(e as Error).message}`);
  }
  let onQuarantine: (report: QuarantineReport) => void = (report) => logQuarantine(report);
  const logQuarantine = (r: QuarantineReport): void =>
    log.error(
      `E_QUEUE_CORRUPT: ${r.reason}; moved ${r.file} aside${r.movedTo ? ` to ${r.movedTo}` : ""} ` +
        `and started a fresh queue; updates lost: ${r.lostUpdates}`,
      { code: "E_QUEUE_CORRUPT", file: r.file, lostUpdates: r.lostUpdates },
    );
  const now = opts.now ?? Date.now;
  const outbox = new Outbox(join(opts.dir, QUEUE_FILE), {
    maxChunkBytes: opts.maxChunkBytes,
    maxBytes: opts.maxBytes,
    onQuarantine: (report) => onQuarantine(report),
    now,
  });
  const moduleMetrics = opts.metrics ?? defaultUpdateQueueModuleMetrics(opts.deviceId);
  const metered = updateQueueMetrics(moduleMetrics, {
    outbox,
    dir: opts.dir,
    unstored: () => held.size,
    lostInputs: () => lostInputs,
    invalidInputs: () => invalidInputs,
    deferred: () => deferredOf().deferred,
  });
  if (outbox.quarantined) metered.quarantines.inc();
  const sender = new Sender(outbox, {
    send: (chunk) => client.sendOutputEvent(outputName, toMessage(chunk)).then(() => undefined),
    concurrency: opts.concurrency,
    resendAfterMs: opts.resendAfterMs,
    sendTimeoutMs: opts.sendTimeoutMs,
    backoff: opts.sendBackoff,
    online: false,
    random,
    now,
  });

  let invalidInputs = 0;
  let lastError: string | null = null;
  const held = new Map<string, HeldInput>();
  let heldBytes = 0;
  let lostInputs = 0;
  let storeFailures = 0;
  let storeTimer: NodeJS.Timeout | undefined;

  const problem = (level: LogLevel, message: string, fields?: Record<string, unknown>): void => {
    lastError = message;
    log.log(level, message, fields);
  };

  /** The updates a metered link defers now (not yet sent completely, larger than the upload limit). */
  const deferredOf = (): { deferred: number; deferredBytes: number } => {
    const limit = sender.uploadLimit;
    if (limit === undefined) return { deferred: 0, deferredBytes: 0 };
    const waiting = outbox.pending().filter((u) => u.state === "pending" && u.size > limit);
    return { deferred: waiting.length, deferredBytes: waiting.reduce((n, u) => n + u.size, 0) };
  };

  const status = (): UpdateQueueStatus => ({
    ...outbox.stats(),
    online: sender.online,
    invalidInputs,
    unstored: held.size,
    unstoredBytes: heldBytes,
    lostInputs,
    quarantined: outbox.quarantined,
    lastError,
    ...deferredOf(),
    config: {
      ...props.values(),
      maxChunkBytes: outbox.maxChunkBytes,
      resendAfterMs: sender.resendAfterMs,
      capacityBytes: outbox.capacityBytes,
    },
  });

  /** The reported status (sent by the host, throttled). */
  const reported = (): Record<string, unknown> => ({
    [REPORTED_KEY]: { ...status(), reportedAt: new Date().toISOString() },
  });
  onQuarantine = (report) => {
    metered.quarantines.inc();
    logQuarantine(report);
    lastError = `E_QUEUE_CORRUPT: ${report.reason}`;
    host.changed();
  };
  if (outbox.quarantined) logQuarantine(outbox.quarantined); // found while opening, before the log was wired

  // --- operator → module: the writable properties (./model.ts) ---------------------------------------------------
  // Each applies at once (docs/operations.md "Update-queue and quantizer properties"): maxChunkBytes from the next
  // send attempt, resendAfterMs to the resend timer, capacityBytes to the next update stored (lowered, it drops
  // nothing), retentionHours at once and then every retentionSweepMs, the metered link at once (an update being
  // sent stops before its next chunk).
  let retentionHours = 0;
  // The metered-link policy in effect is kept with the queue (outbox setting `metered`), so that after a restart it
  // holds until the twin is read, even when that read fails and the link is used anyway.
  const meteredLink = { on: false, maxUploadBytes: 0 };
  const saved = outbox.setting(METERED_SETTING) as { on?: unknown; maxUploadBytes?: unknown } | undefined;
  if (typeof saved?.on === "boolean" && Number.isSafeInteger(saved.maxUploadBytes)) {
    meteredLink.on = saved.on;
    meteredLink.maxUploadBytes = Math.max(0, saved.maxUploadBytes as number);
  }
  const uploadLimit = (): number | undefined =>
    meteredLink.on && meteredLink.maxUploadBytes > 0 ? meteredLink.maxUploadBytes : undefined;
  sender.setUploadLimit(uploadLimit());
  /** The metered-link policy took a new value: the sender and the saved setting follow. */
  const meteredChanged = (): void => {
    sender.setUploadLimit(uploadLimit());
    try {
      outbox.saveSetting(METERED_SETTING, meteredLink);
    } catch (e) {
      problem("warn", `saving the metered-link policy failed (it applies until a restart): ${message(e)}`);
    }
  };
  let twinRead = false;
  const applyProperty = (name: keyof UpdateQueueProperties, value: number | boolean): void => {
    switch (name) {
      case "maxChunkBytes":
        outbox.setMaxChunkBytes(value as number);
        break;
      case "resendAfterMs":
        sender.setResendAfterMs(value as number);
        break;
      case "capacityBytes":
        outbox.setCapacityBytes(value as number);
        retryHeldSoon(); // a larger capacity may make room for updates held meanwhile
        break;
      case "retentionHours":
        retentionHours = value as number;
        expireOld();
        break;
      case "meteredLink":
        meteredLink.on = value as boolean;
        meteredChanged();
        break;
      case "meteredMaxUploadBytes":
        meteredLink.maxUploadBytes = value as number;
        meteredChanged();
        break;
    }
    host.changed();
  };
  const props = new WritableProperties({
    specs: updateQueueProperties({
      maxChunkBytes: outbox.maxChunkBytes,
      resendAfterMs: sender.resendAfterMs,
      capacityBytes: outbox.capacityBytes,
    }),
    cloudKeys: CLOUD_DESIRED_KEYS,
    reservedKeys: [REPORTED_KEY],
    ack: (outcomes, version) => host.ackDesired(outcomes, version),
    apply: (name, value) => applyProperty(name, value),
    log: (level, line) => (level === "warn" ? problem("warn", line) : log.info(line)),
  });

  /** Drops the undelivered updates older than retentionHours, one log line each (counted: dropped_expired). */
  const expireOld = (): number => {
    if (retentionHours <= 0 || host.stopped) return 0;
    let dropped;
    try {
      dropped = outbox.dropExpired(now() - retentionHours * 3600_000);
    } catch (e) {
      problem("warn", `dropping expired updates failed: ${message(e)}`);
      return 0;
    }
    for (const u of dropped)
      log.warn(
        `dropped update ${u.updateId} (job ${u.jobId}, round ${u.round}, ${u.size} bytes): ` +
          `undelivered for more than retentionHours ${retentionHours}`,
        { updateId: u.updateId, jobId: u.jobId, round: u.round, bytes: u.size, reason: "expired" },
      );
    if (dropped.length > 0) {
      retryHeldSoon();
      sender.kick();
      host.changed();
    }
    return dropped.length;
  };
  const retentionTimer = setInterval(() => void expireOld(), opts.retentionSweepMs ?? 60_000);
  retentionTimer.unref();

  // --- cloud → module: acks, closed rounds ------------------------------------------------------------------------
  /** The Function's desired `acks` and `openRounds` (a twin read's whole document, or a patch). */
  const applyCloudKeys = (desired: Record<string, unknown>): void => {
    if (host.stopped || typeof desired !== "object" || desired === null) return;
    try {
      const acks = ackIdsOf(desired.acks);
      if (acks.length > 0 && outbox.ackMany(acks) > 0) retryHeldSoon();
      for (const [jobId, round] of openRoundsOf(desired.openRounds)) {
        const n = outbox.dropClosedRounds(jobId, round);
        if (n > 0) {
          retryHeldSoon();
          log.info(`dropped ${n} update(s) of closed rounds of ${jobId} (open: ${round})`, {
            jobId,
            openRound: round,
            dropped: n,
          });
        }
      }
    } catch (e) {
      problem("warn", `applying desired properties failed: ${message(e)}`);
    }
    sender.kick();
    host.changed();
  };
  // --- trainer → module -----------------------------------------------------------------------------------------
  /**
   * Tells the trainer module (module-to-module direct method through edgeHub) that an update could not be stored,
   * or was stored after all. Best effort: outside IoT Edge there is no method client, and a trainer that is down
   * learns nothing — the queue's reported `unstored`/`lostInputs` still show it.
   */
  const notifyTrainer = (
    methodName: "updateNotStored" | "updateStored",
    h: Pick<HeldInput, "updateId" | "jobId" | "round" | "deviceId">,
    extra: Record<string, unknown> = {},
  ): void => {
    if (typeof client.invokeMethod !== "function") return;
    const payload = { updateId: h.updateId, jobId: h.jobId, round: h.round, ...extra };
    let call: Promise<unknown>;
    try {
      call = client.invokeMethod(opts.deviceId ?? h.deviceId, trainerModuleId, {
        methodName,
        payload,
        responseTimeoutInSeconds: 10,
        connectTimeoutInSeconds: 5,
      });
    } catch (e) {
      call = Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
    call.catch((e: unknown) =>
      log.warn(`telling module '${trainerModuleId}' ${methodName} failed: ${message(e)}`),
    );
  };

  /** Tries the held inputs again (oldest first); completes each one stored. */
  const retryHeld = (): void => {
    storeTimer = undefined;
    if (host.stopped) return;
    for (const h of [...held.values()]) {
      try {
        h.store();
      } catch (e) {
        if (isFlotillaError(e) && INPUT_ERRORS.has(e.code)) {
          // E.g. a duplicate chunk that now conflicts: a redelivery cannot fix it either.
          release(h);
          invalidInputs++;
          problem("warn", `rejected a held input message: ${e.code}: ${e.message}`, {
            updateId: h.updateId,
            code: e.code,
          });
          host.complete(h.msg);
          continue;
        }
        storeFailures++;
        problem("warn", `${held.size} update(s) still not stored: ${message(e)}`);
        scheduleStoreRetry();
        host.changed();
        return;
      }
      release(h);
      storeFailures = 0;
      log.info(`stored update ${h.updateId} after it was refused`, { updateId: h.updateId });
      host.complete(h.msg);
      // An update split into chunks is told about once: when its last held chunk is stored.
      if (!holding(h.updateId)) notifyTrainer("updateStored", h);
    }
    sender.kick();
    host.changed();
  };
  /** Whether a message of this update other than `except` is held. */
  const holding = (updateId: string, except?: string): boolean => {
    for (const h of held.values()) if (h.updateId === updateId && h.key !== except) return true;
    return false;
  };
  const release = (h: HeldInput): void => {
    if (held.delete(h.key)) heldBytes -= h.bytes;
  };
  const scheduleStoreRetry = (): void => {
    if (host.stopped || storeTimer || held.size === 0) return;
    storeTimer = setTimeout(retryHeld, backoffDelay(Math.max(1, storeFailures), storeBackoff, random));
  };
  /** Space may have been freed (acks): try the held inputs at once. */
  const retryHeldSoon = (): void => {
    if (held.size === 0 || host.stopped) return;
    if (storeTimer) clearTimeout(storeTimer);
    storeTimer = setTimeout(retryHeld, 0);
  };

  const onInput = (msg: Message): void => {
    // Stored synchronously, inside the input event: over MQTT the SDK has already PUBACKed the message (complete()
    // is a no-op there), so the sooner the fsync the smaller the window; over AMQP complete() is the real ack and
    // is only sent below, after the commit.
    let entry: HeldInput;
    try {
      const bytes = msg.getBytes();
      const chunk = inputChunkMeta(msg);
      if (chunk) {
        const store = (): void => void outbox.stageChunk(bytes, chunk); // one message of an update split up
        entry = {
          key: `${chunk.updateId}:${chunk.chunkIndex}`,
          msg,
          bytes: bytes.byteLength,
          ...chunk,
          store,
        };
        store();
      } else {
        const id = property(msg, "updateId");
        const meta = { ...frameMeta(bytes), ...(id ? { updateId: id } : {}) };
        const updateId = meta.updateId ?? deriveUpdateId(sha256(bytes));
        const store = (): void => void outbox.enqueue(bytes, meta);
        entry = { key: updateId, msg, bytes: bytes.byteLength, ...meta, updateId, store };
        store();
      }
    } catch (e) {
      if (isFlotillaError(e) && INPUT_ERRORS.has(e.code)) {
        invalidInputs++;
        problem("warn", `rejected an input message: ${e.code}: ${e.message}`, { code: e.code });
        host.complete(msg); // a redelivery would fail the same way
        host.changed();
      } else {
        holdRefused(msg, entry!, e);
      }
      return;
    }
    host.complete(msg);
    sender.kick();
    host.changed();
  };

  /**
   * A valid update the queue refused: it is full (E_QUEUE_FULL: capacityBytes), or the disk refused it
   * (E_QUEUE_DISK_FULL, E_QUEUE_IO, E_QUEUE_CORRUPT, ...). IoT Edge semantics: over
   * AMQP edgeHub redelivers an input message that is not completed; over MQTT the SDK has already PUBACKed it when
   * the event fires (azure-iot-device-mqtt's complete() is a no-op), so not completing alone would lose it. So the
   * update is (1) not completed — a restart gets it again over AMQP, (2) held in memory, bounded by maxHeldBytes,
   * and stored by a retry with backoff or as soon as acks free space, then completed, and (3) reported: an error
   * line, `unstored` in the reported status, and the trainer is told through the direct method `updateNotStored`
   * (then `updateStored`). The trainer's own output cannot fail for this: edgeHub accepted it long before.
   */
  const holdRefused = (msg: Message, entry: HeldInput | undefined, e: unknown): void => {
    storeFailures++;
    if (!entry) {
      problem("error", `could not store an update: ${message(e)}`);
      return;
    }
    const code = isFlotillaError(e) ? e.code : "E_QUEUE_IO";
    const already = held.get(entry.key);
    if (already) release(already); // a redelivery of a message held already: keep the newest
    if (heldBytes + entry.bytes > maxHeldBytes) {
      lostInputs++;
      problem(
        "error",
        `could not store update ${entry.updateId} (${message(e)}) and cannot hold it: ` +
          `${heldBytes} bytes are held already (max ${maxHeldBytes}); it is lost unless edgeHub redelivers it`,
        { updateId: entry.updateId, jobId: entry.jobId, round: entry.round, code },
      );
      notifyTrainer("updateNotStored", entry, { code, message: message(e), held: false });
    } else {
      held.set(entry.key, entry);
      heldBytes += entry.bytes;
      problem(
        "error",
        `could not store update ${entry.updateId} (${message(e)}); holding it in memory ` +
          `(${held.size} held) and trying again`,
        { updateId: entry.updateId, jobId: entry.jobId, round: entry.round, code },
      );
      const told = already !== undefined || holding(entry.updateId, entry.key);
      if (!told) notifyTrainer("updateNotStored", entry, { code, message: message(e), held: true });
      scheduleStoreRetry();
    }
    host.changed();
  };

  // --- the host: link, twin, reporting, methods, inputs ------------------------------------------------------------
  const host: ModuleHost = new ModuleHost({
    name: "update-queue",
    client,
    log,
    stoppedCode: "E_QUEUE_STOPPED",
    stoppedMessage: "the update queue is stopped",
    internalCode: "E_QUEUE_IO",
    methodErrorStatus: (code) => (code === "E_QUEUE_INVALID" ? 400 : 500),
    twinTimeoutMs,
    reportIntervalMs: opts.reportIntervalMs ?? DEFAULTS.reportIntervalMs,
    reconnectDelay: (failures) => backoffDelay(failures, reconnectBackoff, random),
    // An SDK `error` (e.g. a failed subscription) counts as the link being down: offline, reconnect.
    errorIsDisconnect: true,
    closeClient: opts.closeClient,
    metrics: moduleMetrics,
    reportedKeys: [REPORTED_KEY],
    hooks: {
      // Every twin GET (after each (re)connection, the SDK re-subscribes but does not re-GET): acks and
      // configuration set while the link was down are applied before anything is resent.
      onTwin: (twin) => {
        if (host.stopped) return;
        props.onTwin(twin.properties.desired, twin.properties.reported);
        if (!twinRead) {
          // The twin's values replace the saved ones (the properties start from their defaults, so a value equal to
          // a default was not "applied").
          twinRead = true;
          meteredLink.on = props.get("meteredLink");
          meteredLink.maxUploadBytes = props.get("meteredMaxUploadBytes");
          meteredChanged();
        }
        applyCloudKeys(twin.properties.desired);
      },
      onDesiredPatch: (delta) => {
        if (host.stopped) return;
        props.onPatch(delta);
        applyCloudKeys(delta);
      },
      onOnline: () => {
        expireOld(); // nothing past its retention is resent
        sender.resendUnacked();
        sender.setOnline(true);
      },
      onOffline: () => sender.setOnline(false),
      onProblem: (text) => void (lastError = text),
      reported,
    },
    methods: {
      ack: (payload) => {
        const ids = ackIdsOf(payload?.updateIds, true);
        const acked = outbox.ackMany(ids);
        if (acked > 0) retryHeldSoon();
        sender.kick();
        host.changed();
        return { status: 200, payload: { acked, depth: outbox.stats().depth } };
      },
      status: () => ({ status: 200, payload: status() }),
    } satisfies Record<UpdateQueueMethod, MethodHandler>,
    inputs: { [inputName]: onInput },
  });

  sender.on("sent", () => host.changed());
  sender.on("dropped", ({ updateId, error }) =>
    problem("error", `dropped ${updateId}: ${message(error)}`, { updateId, err: error }),
  );
  sender.on("fault", ({ error }) => problem("error", `queue failure: ${message(error)}`, { err: error }));
  sender.on("retry", ({ updateId, error, delayMs }) =>
    log.warn(`sending ${updateId} failed (${message(error)}); retrying in ${delayMs} ms`, {
      updateId,
      delayMs,
      err: error,
    }),
  );

  sender.start();
  await host.start();

  return {
    outbox,
    sender,
    metrics: moduleMetrics,
    status,
    reportNow: () => host.reportNow(),
    expireOld: () => expireOld(),
    setLinkEnabled: (enabled: boolean) => host.setLinkEnabled(enabled),
    stop: () =>
      host.stop({
        drain: async () => {
          if (storeTimer) clearTimeout(storeTimer);
          clearInterval(retentionTimer);
          if (held.size > 0)
            log.error(
              `stopping with ${held.size} update(s) not stored (not completed: edgeHub keeps them over AMQP)`,
              { unstored: held.size },
            );
          await sender.stop();
          try {
            outbox.close();
          } catch (e) {
            log.warn(`closing the queue file failed: ${message(e)}`, { err: e });
          }
        },
      }),
  };
}

function property(msg: Message, key: string): string | undefined {
  const v: unknown = msg.properties?.getValue(key);
  return typeof v === "string" && v !== "" ? v : undefined;
}

/**
 * The chunk properties of an input message (docs/iothub-protocol.md), or undefined for a message carrying a whole
 * frame (no `chunkCount`): modules/shared/chunks.ts, shared with the quantizer. Missing or malformed values come out
 * as ""/NaN and are rejected by Outbox.stageChunk.
 */
export { inputChunkMeta };

/** One chunk as an IoT Hub message: binary body, messageId for the cloud's dedup, chunk metadata as properties. */
export function toMessage(chunk: OutboxChunk): Message {
  return chunkMessage(chunk);
}

/**
 * Update ids in the desired `acks` (an array, or a map whose truthy keys are acked: patches to a map merge) or
 * in the `ack` method's `updateIds`. `strict` (the method) rejects anything that is not an array of strings.
 */
export function ackIdsOf(value: unknown, strict = false): string[] {
  if (value === undefined || value === null) {
    if (strict) fail("E_QUEUE_INVALID", "expected { updateIds: string[] }");
    return [];
  }
  if (Array.isArray(value)) {
    const ids = value.filter((v): v is string => typeof v === "string" && v !== "");
    if (strict && ids.length !== value.length) fail("E_QUEUE_INVALID", "updateIds must be non-empty strings");
    return ids.filter((id) => id.length <= 128);
  }
  if (!strict && typeof value === "object") {
    return Object.entries(value as Record<string, unknown>)
      .filter(([k, v]) => !k.startsWith("$") && Boolean(v))
      .map(([k]) => k);
  }
  return fail("E_QUEUE_INVALID", "expected { updateIds: string[] }");
}

/**
 * Desired `openRounds`: `{ [jobId]: openRound }` or `[{ jobId, round }]` (job ids with '.' cannot be twin keys).
 * The round is the oldest one the cloud still accepts for the job (a synchronous job's open round; an async job's
 * oldest accepted version + 1): updates of earlier rounds are dropped.
 */
export function openRoundsOf(value: unknown): [string, number][] {
  const out: [string, number][] = [];
  const add = (jobId: unknown, round: unknown): void => {
    if (typeof jobId === "string" && jobId !== "" && Number.isSafeInteger(round) && (round as number) >= 0) {
      out.push([jobId, round as number]);
    }
  };
  if (Array.isArray(value)) {
    for (const e of value)
      if (typeof e === "object" && e !== null)
        add((e as { jobId?: unknown }).jobId, (e as { round?: unknown }).round);
  } else if (typeof value === "object" && value !== null) {
    for (const [k, v] of Object.entries(value)) if (!k.startsWith("$")) add(k, v);
  }
  return out;
}

// --- container entry ------------------------------------------------------------------------------------------

/**
 * Creates the module client: from the IoT Edge environment, or from a connection string (+ CA) when local; it
 * announces the queue's Plug and Play model ID (./model.ts MODEL_ID).
 */
export function createModuleClient(config: UpdateQueueConfig): Promise<ModuleClient> {
  return createSharedModuleClient(config.connection, MODEL_ID);
}

/** Container entry: configuration from the environment (validated, naming what is missing); owns its client. */
export async function start(log: Logger, env: Env = process.env): Promise<UpdateQueueHandle> {
  const config = loadConfig(env);
  const client = await createModuleClient(config);
  log.info(`queue in ${config.queueDir}`, { queueDir: config.queueDir });
  const metrics = containerModuleMetrics("update-queue", env);
  const queue = await startUpdateQueue({
    client,
    metrics,
    dir: config.queueDir,
    maxChunkBytes: config.maxChunkBytes,
    resendAfterMs: config.resendAfterMs,
    maxBytes: config.maxBytes,
    closeClient: true,
    // Told when an update cannot be stored (module-to-module direct method through edgeHub).
    trainerModuleId: env.FLOTILLA_TRAINER_MODULE?.trim() || undefined,
    deviceId: env.IOTEDGE_DEVICEID?.trim() || undefined,
    log,
  });
  // Prometheus text on :9600/metrics (docs/metrics.md); a port that cannot be listened on is logged, not fatal.
  return alsoClosing(queue, await serveContainerMetrics(metrics, config.metricsPort, log));
}

// Everything is on disk once stop() resolves; the process then exits even if the SDK is still retrying an operation
// against an unreachable hub (its retry policy runs for up to 4 minutes).
if (require.main === module) runModule("update-queue", (log) => start(log));
