import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { Message, ModuleClient } from "azure-iot-device";
import { fail, isFlotillaError } from "../../../core/errors";
import { backoffDelay, checkBackoff, type BackoffOptions } from "./backoff";
import { loadConfig, parseDesiredConfig, type Env, type UpdateQueueConfig } from "./config";
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
import {
  createModuleClient as createSharedModuleClient,
  defaultLog,
  errorText as message,
  withTimeout,
  type LogLevel,
} from "../../shared/module-client";
import { Throttle } from "../../shared/throttle";

/**
 * The update-queue IoT Edge module. edgeHub routes the trainer's updates here through the quantizer
 * (FROM /messages/modules/quantizer/outputs/updates INTO BrokeredEndpoint("/modules/update-queue/inputs/updates"));
 * each one is stored in the outbox before the input message is completed, then sent as chunks on the `upstream`
 * output (FROM /messages/modules/update-queue/outputs/* INTO $upstream) until the cloud acknowledges it through
 * the module twin (desired `acks`) or the `ack` direct method. An update the disk refuses is held, retried and
 * reported, and the trainer told (`holdRefused`); a damaged queue file is moved aside and reported (./queue-file.ts).
 *
 * `startUpdateQueue` takes an injected client and touches no globals (no process.env, signals or exit), so a local
 * fleet launcher can run many queues in one process; `run` is the container entry point.
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

type ReportedUpdate = (patch: Record<string, unknown>, done: (err?: Error) => void) => void;

export interface MethodRequestLike {
  payload?: unknown;
}

export interface MethodResponseLike {
  send(status: number, payload?: unknown): Promise<void>;
}

export type { LogLevel };

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
  log?: (level: LogLevel, message: string) => void;
  random?: () => number;
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
  readonly config: { readonly maxChunkBytes: number; readonly resendAfterMs: number };
}

export interface UpdateQueueHandle {
  readonly outbox: Outbox;
  readonly sender: Sender;
  status(): UpdateQueueStatus;
  /** Sends the reported properties now instead of at the next throttle slot. */
  reportNow(): void;
  stop(): Promise<void>;
}

export const QUEUE_FILE = "outbox.sqlite";
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
  const log = opts.log ?? defaultLog;
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
    log(
      "error",
      `update-queue: E_QUEUE_CORRUPT: ${r.reason}; moved ${r.file} aside${r.movedTo ? ` to ${r.movedTo}` : ""} ` +
        `and started a fresh queue; updates lost: ${r.lostUpdates}`,
    );
  const outbox = new Outbox(join(opts.dir, QUEUE_FILE), {
    maxChunkBytes: opts.maxChunkBytes,
    maxBytes: opts.maxBytes,
    onQuarantine: (report) => onQuarantine(report),
  });
  const sender = new Sender(outbox, {
    send: (chunk) => client.sendOutputEvent(outputName, toMessage(chunk)).then(() => undefined),
    concurrency: opts.concurrency,
    resendAfterMs: opts.resendAfterMs,
    sendTimeoutMs: opts.sendTimeoutMs,
    backoff: opts.sendBackoff,
    online: false,
    random,
  });

  let stopped = false;
  let invalidInputs = 0;
  let lastError: string | null = null;
  let twin: TwinLike | undefined;
  let opening = false;
  let syncing = false;
  let resyncRequested = false;
  let reconnectFailures = 0;
  let reconnectTimer: NodeJS.Timeout | undefined;
  let twinFailures = 0;
  let twinTimer: NodeJS.Timeout | undefined;
  const held = new Map<string, HeldInput>();
  let heldBytes = 0;
  let lostInputs = 0;
  let storeFailures = 0;
  let storeTimer: NodeJS.Timeout | undefined;

  const problem = (level: LogLevel, message: string): void => {
    lastError = message;
    log(level, message);
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
    config: { maxChunkBytes: outbox.maxChunkBytes, resendAfterMs: sender.resendAfterMs },
  });

  const reporter = new Throttle(opts.reportIntervalMs ?? DEFAULTS.reportIntervalMs, () => {
    if (stopped || !twin || !sender.online) return;
    let patch: Record<string, unknown>;
    try {
      patch = { [REPORTED_KEY]: { ...status(), reportedAt: new Date().toISOString() } };
    } catch (e) {
      return problem("warn", `update-queue: cannot read queue status: ${message(e)}`);
    }
    const update = twin.properties.reported.update as ReportedUpdate | undefined;
    if (typeof update !== "function")
      return problem("warn", "update-queue: the twin cannot update reported properties");
    try {
      update.call(twin.properties.reported, patch, (err) => {
        if (err) log("warn", `update-queue: reporting status failed: ${message(err)}`);
      });
    } catch (e) {
      log("warn", `update-queue: reporting status failed: ${message(e)}`);
    }
  });
  onQuarantine = (report) => {
    logQuarantine(report);
    lastError = `E_QUEUE_CORRUPT: ${report.reason}`;
    reporter.schedule();
  };
  if (outbox.quarantined) logQuarantine(outbox.quarantined); // found while opening, before the log was wired

  // --- cloud → module: acks, closed rounds, configuration -------------------------------------------------------
  const applyDesired = (desired: Record<string, unknown>): void => {
    if (stopped || typeof desired !== "object" || desired === null) return;
    const { config, errors } = parseDesiredConfig(desired);
    for (const e of errors) problem("warn", `update-queue: ${e}`);
    try {
      if (config.maxChunkBytes !== undefined) outbox.setMaxChunkBytes(config.maxChunkBytes);
      if (config.resendAfterMs !== undefined) sender.setResendAfterMs(config.resendAfterMs);
      const acks = ackIdsOf(desired.acks);
      if (acks.length > 0 && outbox.ackMany(acks) > 0) retryHeldSoon();
      for (const [jobId, round] of openRoundsOf(desired.openRounds)) {
        const n = outbox.dropClosedRounds(jobId, round);
        if (n > 0)
          log("info", `update-queue: dropped ${n} update(s) of closed rounds of ${jobId} (open: ${round})`);
      }
    } catch (e) {
      problem("warn", `update-queue: applying desired properties failed: ${message(e)}`);
    }
    sender.kick();
    reporter.schedule();
  };
  const onDesired = (delta: Record<string, unknown>): void => applyDesired(delta);
  const onTwinError = (err: Error): void => problem("warn", `update-queue: twin error: ${message(err)}`);

  // --- link state ---------------------------------------------------------------------------------------------
  /** GETs the twin and applies it; true on success. */
  const readTwin = async (): Promise<boolean> => {
    try {
      const t = await withTimeout(client.getTwin(), twinTimeoutMs, "getTwin", { keepAlive: true });
      if (stopped) return false;
      if (t !== twin) {
        twin?.removeListener("properties.desired", onDesired);
        twin?.removeListener("error", onTwinError);
        twin = t;
        t.on("error", onTwinError);
        t.on("properties.desired", onDesired);
      }
      applyDesired(t.properties.desired);
      twinFailures = 0;
      return true;
    } catch (e) {
      problem("warn", `update-queue: reading the module twin failed: ${message(e)}`);
      return false;
    }
  };

  /** A failed twin GET is retried on its own (with backoff) while the link is up, without resending anything. */
  const retryTwinLater = (): void => {
    if (stopped || twinTimer) return;
    twinFailures++;
    twinTimer = setTimeout(
      () => {
        twinTimer = undefined;
        if (stopped || !sender.online || syncing) return;
        void readTwin().then((ok) => (ok ? undefined : retryTwinLater()));
      },
      backoffDelay(twinFailures, reconnectBackoff, random),
    );
  };

  /**
   * After every (re)connection: GET the twin again (the SDK re-subscribes but does not re-GET, so acks and config
   * set while offline would be missed), apply its acks, then resend everything still unacknowledged.
   */
  const sync = async (): Promise<void> => {
    if (syncing) {
      resyncRequested = true;
      return;
    }
    syncing = true;
    try {
      do {
        resyncRequested = false;
        const ok = await readTwin();
        if (stopped) return;
        sender.resendUnacked();
        sender.setOnline(true);
        reporter.schedule();
        if (!ok) retryTwinLater();
      } while (resyncRequested && !stopped);
    } finally {
      syncing = false;
    }
  };

  const connect = async (): Promise<void> => {
    reconnectTimer = undefined;
    if (stopped) return;
    opening = true;
    try {
      await client.open();
    } catch (e) {
      opening = false;
      problem("warn", `update-queue: connecting failed: ${message(e)}`);
      scheduleReconnect();
      return;
    }
    opening = false;
    reconnectFailures = 0;
    if (!stopped) await sync();
  };

  const scheduleReconnect = (): void => {
    if (stopped || opening || reconnectTimer) return;
    reconnectFailures++;
    const delay = backoffDelay(reconnectFailures, reconnectBackoff, random);
    log("info", `update-queue: reconnecting in ${delay} ms`);
    reconnectTimer = setTimeout(() => void connect(), delay);
  };

  const onConnect = (): void => {
    // The SDK reconnected by itself (or open() is connecting): either way the twin must be read again.
    if (stopped || opening) return;
    void sync();
  };
  const onDisconnect = (err?: unknown): void => {
    if (stopped) return;
    problem("warn", `update-queue: disconnected${err ? `: ${message(err)}` : ""}`);
    sender.setOnline(false);
    scheduleReconnect();
  };
  const onError = (err?: unknown): void => {
    if (stopped) return;
    problem("warn", `update-queue: client error: ${message(err)}`);
    sender.setOnline(false);
    scheduleReconnect();
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
      log("warn", `update-queue: telling module '${trainerModuleId}' ${methodName} failed: ${message(e)}`),
    );
  };

  /** Tries the held inputs again (oldest first); completes each one stored. */
  const retryHeld = (): void => {
    storeTimer = undefined;
    if (stopped) return;
    for (const h of [...held.values()]) {
      try {
        h.store();
      } catch (e) {
        if (isFlotillaError(e) && INPUT_ERRORS.has(e.code)) {
          // E.g. a duplicate chunk that now conflicts: a redelivery cannot fix it either.
          release(h);
          invalidInputs++;
          problem("warn", `update-queue: rejected a held input message: ${e.code}: ${e.message}`);
          settle(client.complete(h.msg), log);
          continue;
        }
        storeFailures++;
        problem("warn", `update-queue: ${held.size} update(s) still not stored: ${message(e)}`);
        scheduleStoreRetry();
        reporter.schedule();
        return;
      }
      release(h);
      storeFailures = 0;
      log("info", `update-queue: stored update ${h.updateId} after the disk refused it`);
      settle(client.complete(h.msg), log);
      // An update split into chunks is told about once: when its last held chunk is stored.
      if (!holding(h.updateId)) notifyTrainer("updateStored", h);
    }
    sender.kick();
    reporter.schedule();
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
    if (stopped || storeTimer || held.size === 0) return;
    storeTimer = setTimeout(retryHeld, backoffDelay(Math.max(1, storeFailures), storeBackoff, random));
  };
  /** Space may have been freed (acks): try the held inputs at once. */
  const retryHeldSoon = (): void => {
    if (held.size === 0 || stopped) return;
    if (storeTimer) clearTimeout(storeTimer);
    storeTimer = setTimeout(retryHeld, 0);
  };

  const onInput = (name: string, msg: Message): void => {
    if (stopped) return;
    if (name !== inputName) {
      log("warn", `update-queue: ignoring a message on unknown input '${name}'`);
      settle(client.complete(msg), log);
      return;
    }
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
        problem("warn", `update-queue: rejected an input message: ${e.code}: ${e.message}`);
        settle(client.complete(msg), log); // a redelivery would fail the same way
        reporter.schedule();
      } else {
        holdRefused(msg, entry!, e);
      }
      return;
    }
    settle(client.complete(msg), log);
    sender.kick();
    reporter.schedule();
  };

  /**
   * A valid update the disk refused (E_QUEUE_DISK_FULL, E_QUEUE_IO, E_QUEUE_CORRUPT, ...). IoT Edge semantics: over
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
      problem("error", `update-queue: could not store an update: ${message(e)}`);
      return;
    }
    const code = isFlotillaError(e) ? e.code : "E_QUEUE_IO";
    const already = held.get(entry.key);
    if (already) release(already); // a redelivery of a message held already: keep the newest
    if (heldBytes + entry.bytes > maxHeldBytes) {
      lostInputs++;
      problem(
        "error",
        `update-queue: could not store update ${entry.updateId} (${message(e)}) and cannot hold it: ` +
          `${heldBytes} bytes are held already (max ${maxHeldBytes}); it is lost unless edgeHub redelivers it`,
      );
      notifyTrainer("updateNotStored", entry, { code, message: message(e), held: false });
    } else {
      held.set(entry.key, entry);
      heldBytes += entry.bytes;
      problem(
        "error",
        `update-queue: could not store update ${entry.updateId} (${message(e)}); holding it in memory ` +
          `(${held.size} held) and trying again`,
      );
      const told = already !== undefined || holding(entry.updateId, entry.key);
      if (!told) notifyTrainer("updateNotStored", entry, { code, message: message(e), held: true });
      scheduleStoreRetry();
    }
    reporter.schedule();
  };

  // Link listeners first: registering methods and inputs makes the SDK subscribe, and failures come as "error".
  client.on("error", onError);
  client.on("disconnect", onDisconnect);
  client.on("connect", onConnect);

  // --- direct methods -------------------------------------------------------------------------------------------
  client.onMethod("ack", (request, response) => {
    if (!response) return;
    if (stopped)
      return respond(response, 503, { code: "E_QUEUE_STOPPED", message: "the update queue is stopped" }, log);
    try {
      const ids = ackIdsOf(parsePayload(request?.payload)?.updateIds, true);
      const acked = outbox.ackMany(ids);
      if (acked > 0) retryHeldSoon();
      sender.kick();
      reporter.schedule();
      respond(response, 200, { acked, depth: outbox.stats().depth }, log);
    } catch (e) {
      const code = isFlotillaError(e) ? e.code : "E_QUEUE_IO";
      respond(response, code === "E_QUEUE_INVALID" ? 400 : 500, { code, message: message(e) }, log);
    }
  });
  client.onMethod("status", (_request, response) => {
    if (!response) return;
    if (stopped)
      return respond(response, 503, { code: "E_QUEUE_STOPPED", message: "the update queue is stopped" }, log);
    try {
      respond(response, 200, status(), log);
    } catch (e) {
      respond(response, 500, { code: isFlotillaError(e) ? e.code : "E_QUEUE_IO", message: message(e) }, log);
    }
  });

  sender.on("sent", () => reporter.schedule());
  sender.on("dropped", ({ updateId, error }) =>
    problem("error", `update-queue: dropped ${updateId}: ${message(error)}`),
  );
  sender.on("fault", ({ error }) => problem("error", `update-queue: queue failure: ${message(error)}`));
  sender.on("retry", ({ updateId, error, delayMs }) =>
    log("warn", `update-queue: sending ${updateId} failed (${message(error)}); retrying in ${delayMs} ms`),
  );

  client.on("inputMessage", onInput);
  sender.start();
  await connect();

  return {
    outbox,
    sender,
    status,
    reportNow: () => reporter.flush(),
    async stop() {
      if (stopped) return;
      stopped = true;
      if (reconnectTimer) clearTimeout(reconnectTimer);
      if (twinTimer) clearTimeout(twinTimer);
      if (storeTimer) clearTimeout(storeTimer);
      if (held.size > 0)
        log(
          "error",
          `update-queue: stopping with ${held.size} update(s) not stored (not completed: edgeHub keeps them over AMQP)`,
        );
      reporter.cancel();
      client.removeListener("inputMessage", onInput);
      client.removeListener("connect", onConnect);
      client.removeListener("disconnect", onDisconnect);
      // The "error" listener stays (inert): removing the input listener makes the SDK unsubscribe, and a failure
      // of that is emitted as "error", which would throw with no listener.
      twin?.removeListener("properties.desired", onDesired);
      await sender.stop();
      try {
        outbox.close();
      } catch (e) {
        log("warn", `update-queue: closing the queue file failed: ${message(e)}`);
      }
      if (opts.closeClient) {
        try {
          // close() never settles while the SDK is reconnecting: bound it, as the trainer and profiler do.
          await withTimeout(client.close(), 5000, "client close");
        } catch (e) {
          log("warn", `update-queue: closing the client failed: ${message(e)}`);
        }
      }
    },
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

/** Desired `openRounds`: `{ [jobId]: openRound }` or `[{ jobId, round }]` (job ids with '.' cannot be twin keys). */
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

function parsePayload(payload: unknown): Record<string, unknown> | undefined {
  let p = payload;
  if (Buffer.isBuffer(p)) p = p.toString("utf8");
  if (typeof p === "string") {
    try {
      p = JSON.parse(p);
    } catch {
      fail("E_QUEUE_INVALID", "method payload is not JSON");
    }
  }
  return typeof p === "object" && p !== null ? (p as Record<string, unknown>) : undefined;
}

function respond(
  response: MethodResponseLike,
  status: number,
  payload: unknown,
  log: (level: LogLevel, message: string) => void,
): void {
  response
    .send(status, payload)
    .catch((e: unknown) => log("warn", `update-queue: method response failed: ${message(e)}`));
}

function settle(p: Promise<unknown>, log: (level: LogLevel, message: string) => void): void {
  p.catch((e: unknown) => log("warn", `update-queue: completing an input message failed: ${message(e)}`));
}

// --- container entry ------------------------------------------------------------------------------------------

/** Creates the module client: from the IoT Edge environment, or from a connection string (+ CA) when local. */
export function createModuleClient(config: UpdateQueueConfig): Promise<ModuleClient> {
  return createSharedModuleClient(config.connection);
}

/** Container entry: configuration from the environment, runs until SIGTERM/SIGINT. */
export async function run(env: Env = process.env): Promise<void> {
  const config = loadConfig(env);
  const client = await createModuleClient(config);
  const handle = await startUpdateQueue({
    client,
    dir: config.queueDir,
    maxChunkBytes: config.maxChunkBytes,
    resendAfterMs: config.resendAfterMs,
    maxBytes: config.maxBytes,
    closeClient: true,
    // Told when an update cannot be stored (module-to-module direct method through edgeHub).
    trainerModuleId: env.FLOTILLA_TRAINER_MODULE?.trim() || undefined,
    deviceId: env.IOTEDGE_DEVICEID?.trim() || undefined,
  });
  await new Promise<void>((resolve) => {
    process.once("SIGTERM", () => resolve());
    process.once("SIGINT", () => resolve());
  });
  await handle.stop();
  // Everything is on disk by now. The SDK may still be retrying an operation against an unreachable hub (its retry
  // policy runs for up to 4 minutes); do not let that keep the container from stopping.
  setTimeout(() => process.exit(), 5000).unref();
}

if (require.main === module) {
  run().catch((e: unknown) => {
    console.error(`update-queue: ${message(e)}`);
    process.exitCode = 1;
  });
}
