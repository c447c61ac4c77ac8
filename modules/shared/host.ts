import type { Message } from "azure-iot-device";
import { FlotillaError, isFlotillaError, type ErrorCode } from "../../core/errors";
import { errorFields, loggerFromEnv, type Logger } from "../../core/log";
import {
  errorText,
  parsePayload,
  updateReported,
  withTimeout,
  type EdgeModuleClient,
  type MethodRequestLike,
  type MethodResponseLike,
  type TwinLike,
} from "./module-client";
import { Throttle } from "./throttle";
import type { ModuleMetrics } from "./metrics";
import { linkMetrics, type LinkMetrics } from "./link-metrics";
import { ackPatch, type AckOutcome } from "./pnp";

/**
 * The module host: what every Flotilla edge module (trainer, quantizer, update-queue, profiler) needs around its
 * own logic, in one place (docs/architecture.md "Module host"):
 *
 * - the link: `open()`, reconnect with exponential backoff and jitter after a failed open or a `disconnect`; a
 *   `connect` the SDK makes by itself (its own retry) is followed like one of ours;
 * - the module twin: GET after every (re)connection (the SDK re-subscribes after a reconnect but does not re-read
 *   the twin, so a change made meanwhile would be missed), a GET that fails or hangs (E_TIMEOUT: the SDK never
 *   times out a twin request) retried with backoff while the link stays up; desired patches handed on;
 * - reported properties: the module's whole state as one patch, throttled (one Throttle: changes in between
 *   coalesce into one trailing patch), serialised, sent again after each reconnection;
 * - a method table `{ name: (payload) => { status, payload } }`: the payload parsed from JSON, a handler that
 *   throws answered `{ code, message }` (400 by default) — never thrown out to the SDK —, and 503 with the
 *   module's stopped code once it stops (the SDK cannot unregister a method);
 * - input messages dispatched by input name (an unknown input is logged and completed);
 * - `sendWithRetry`: output messages with a timeout per attempt and backoff between attempts;
 * - `setLinkEnabled(false)`: the device's link is taken down on purpose (a launcher replaying a fleet trace, in
 *   which the device is offline): the client is closed (its MQTT/TLS connection ends, so the hub sees the module
 *   disconnected), no reconnect is tried, reported patches wait, and `sendWithRetry` waits for the link instead of
 *   spending attempts; `setLinkEnabled(true)` connects again (twin GET, reported state, queued sends go on);
 * - `stop()`: no more work accepted, the module drains, the last report goes out, listeners go, the client is
 *   closed when the module owns it; `runModule` adds SIGTERM/SIGINT for the container entry (main.ts);
 * - the link metrics every module shares (`metrics`: link up, reconnects, reported patches, method calls by
 *   method and status; modules/shared/link-metrics.ts, docs/metrics.md), and Plug and Play acknowledgements of
 *   desired properties (`ackDesired`, never under a key the module's own state is reported as);
 * - the logger (core/log.ts).
 *
 * A module is its own logic plus a method table on the host. The client is injected (the SDK's ModuleClient in a
 * container; a launcher runs many modules on their own clients in one process), and nothing here touches globals.
 */

export interface MethodResult {
  readonly status: number;
  readonly payload?: unknown;
}

/** A direct method: the payload as a JSON object (undefined when it is not one), and the raw payload. */
export type MethodHandler = (
  payload: Record<string, unknown> | undefined,
  raw: unknown,
) => MethodResult | Promise<MethodResult>;

export type MethodTable = Readonly<Record<string, MethodHandler>>;

/** An input message; the handler completes it (`host.complete`) when it is done with it. */
export type InputHandler = (msg: Message) => void;

/** What the host calls back into the module (all optional). */
export interface ModuleHooks {
  /** After every successful twin GET; `fresh`: a twin object not seen before (read what it reports). */
  onTwin?(twin: TwinLike, fresh: boolean): void | Promise<void>;
  /** A desired-properties patch (the SDK has already merged it into `twin.properties.desired`). */
  onDesiredPatch?(delta: Record<string, unknown>, twin: TwinLike): void;
  /** The transport connected (the client's `connect`, or open() resolved), before the twin GET. */
  onLinkUp?(): void;
  /** The link is up (open succeeded, or the SDK reconnected), after the twin GET was tried. */
  onOnline?(): void;
  /** The link is down (`disconnect`, or `error` with `errorIsDisconnect`). */
  onOffline?(): void;
  /** The module's whole reported patch (undefined: nothing to report yet), sent (throttled) after `changed()`
   * and after each reconnection. */
  reported?(): Record<string, unknown> | undefined;
  /** A reported patch went out. */
  onReported?(patch: Record<string, unknown>): void;
  /** A link or twin problem the host logged, as `CODE: message` text (the module may keep it as its last error). */
  onProblem?(text: string): void;
}

/** The slice of ModuleClient the host uses for inputs and module-to-module calls. */
interface InputClient {
  on(event: "inputMessage", listener: (inputName: string, msg: Message) => void): unknown;
  removeListener(event: "inputMessage", listener: (inputName: string, msg: Message) => void): unknown;
  complete?(msg: Message): Promise<unknown>;
}

export interface ModuleHostOptions {
  /** The module's name: the logger's component, and log lines' prefix. */
  readonly name: string;
  readonly client: EdgeModuleClient;
  readonly log: Logger;
  readonly hooks?: ModuleHooks;
  readonly methods?: MethodTable;
  readonly inputs?: Readonly<Record<string, InputHandler>>;
  /** The code a stopped module answers methods with (503), and why. */
  readonly stoppedCode: ErrorCode;
  readonly stoppedMessage?: string;
  /** Status for a method handler's error code (default 400: a bad payload). */
  readonly methodErrorStatus?: (code: string) => number;
  /** The code of an error thrown by a handler that has none of its own. */
  readonly internalCode?: string;
  readonly twinTimeoutMs?: number;
  /** Least time between two reported patches, ms; 0 = each change at once (still one at a time). */
  readonly reportIntervalMs?: number;
  /** Delay before reconnect (and twin re-read) attempt `failures` (1, 2, ...), ms. */
  readonly reconnectDelay?: (failures: number) => number;
  /** Default backoff: min(60 s, retryDelayMs · 2^(failures−1)) with jitter ×[0.5, 1) (default 1000). */
  readonly retryDelayMs?: number;
  /** Treat a client `error` as the link going down (offline, reconnect). Default: logged only. */
  readonly errorIsDisconnect?: boolean;
  /** Close the client in stop() (the container entry owns its client; a launcher may not). */
  readonly closeClient?: boolean;
  /** The module's metrics: the host keeps the link metrics in it (modules/shared/link-metrics.ts). */
  readonly metrics?: ModuleMetrics;
  /**
   * The top-level reported keys the module's own state uses (`reported()`): a Plug and Play acknowledgement
   * (`ackDesired`) is never sent under one of them, so an ack cannot overwrite the state or the state an ack.
   */
  readonly reportedKeys?: readonly string[];
}

export interface SendOptions {
  /** Attempts per message before giving up with `failCode` (default 8). */
  readonly attempts?: number;
  readonly failCode: ErrorCode;
  /** Stops retrying (its reason is thrown); default: the host's stop signal. */
  readonly signal?: AbortSignal;
  /** Per attempt, ms (default 60,000). */
  readonly timeoutMs?: number;
}

export class ModuleHost {
  readonly log: Logger;
  private readonly client: EdgeModuleClient;
  private readonly hooks: ModuleHooks;
  private readonly twinTimeoutMs: number;
  private readonly retryDelayMs: number;
  private readonly reporter: Throttle | undefined;
  private readonly stopController = new AbortController();
  private currentTwin: TwinLike | undefined;
  private up = false;
  private opening = false;
  private started = false;
  private stopping = false;
  private syncing = false;
  private resync = false;
  private reconnectFailures = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private twinFailures = 0;
  private twinTimer: NodeJS.Timeout | undefined;
  private reportChain: Promise<void> = Promise.resolve();
  private linkEnabled = true;
  private everUp = false;
  private readonly link: LinkMetrics | undefined;
  /** Resolved (and replaced) each time the link is enabled again: what paused sends wait for. */
  private linkBack: { promise: Promise<void>; resolve: () => void } | undefined;

  constructor(private readonly opts: ModuleHostOptions) {
    this.client = opts.client;
    this.log = opts.log;
    this.hooks = opts.hooks ?? {};
    this.twinTimeoutMs = opts.twinTimeoutMs ?? 30_000;
    this.retryDelayMs = opts.retryDelayMs ?? 1000;
    const interval = opts.reportIntervalMs ?? 10_000;
    this.reporter = interval > 0 ? new Throttle(interval, () => this.pushReported()) : undefined;
    this.link = opts.metrics ? linkMetrics(opts.metrics) : undefined;
  }

  /** The link is up or down (`up` and the link_up gauge together; a reconnection is counted). */
  private setUp(up: boolean): void {
    if (up && !this.up && this.everUp) this.link?.reconnects.inc();
    if (up) this.everUp = true;
    this.up = up;
    this.link?.linkUp.set(up ? 1 : 0);
  }

  /** The module twin, once read. */
  get twin(): TwinLike | undefined {
    return this.currentTwin;
  }
  get online(): boolean {
    return this.up;
  }
  /** False while the link is taken down on purpose (setLinkEnabled(false)). */
  get linkIsEnabled(): boolean {
    return this.linkEnabled;
  }
  get stopped(): boolean {
    return this.stopping;
  }
  /** Aborted (reason: FlotillaError with the stopped code) when stop() begins. */
  get stopSignal(): AbortSignal {
    return this.stopController.signal;
  }

  /** Registers listeners, methods and inputs, then connects (a failed open is retried in the background). */
  async start(): Promise<void> {
    if (this.started)
      throw new FlotillaError("E_INTERNAL", `${this.opts.name}: the module host started twice`);
    this.started = true;
    // Link listeners first: registering methods and inputs makes the SDK subscribe, and failures come as "error".
    this.client.on("error", this.onError);
    this.client.on("disconnect", this.onDisconnect);
    this.client.on("connect", this.onConnect);
    for (const [name, handler] of Object.entries(this.opts.methods ?? {}))
      this.client.onMethod(name, (request, response) => this.dispatch(name, handler, request, response));
    if (this.opts.inputs) (this.client as unknown as InputClient).on("inputMessage", this.onInput);
    await this.connect();
  }

  // --- reported properties --------------------------------------------------------------------------------------

  /** The module's state changed: its reported patch goes out (throttled). */
  changed(): void {
    if (this.stopping || !this.hooks.reported) return;
    if (this.reporter) this.reporter.schedule();
    else this.pushReported();
  }

  /** Sends the reported patch now instead of at the next throttle slot. */
  reportNow(): void {
    if (this.reporter) this.reporter.flush();
    else this.pushReported();
  }

  /** Resolves when the reported patches queued so far went out (or failed). */
  reportsSettled(): Promise<void> {
    return this.reportChain;
  }

  /**
   * Reports `patch` besides the module's state (e.g. Plug and Play acknowledgements of desired properties,
   * modules/shared/pnp.ts), at once (not throttled). Kept until it went out: while offline it waits, merged with
   * later extra patches, and goes out with the next reported patch after reconnecting.
   */
  reportPatch(patch: Record<string, unknown>): void {
    if (this.stopping) return;
    Object.assign(this.extraReported, patch);
    this.pushReported();
  }

  private extraReported: Record<string, unknown> = {};

  /**
   * Acknowledges desired properties the Plug and Play way (modules/shared/pnp.ts): `{ [name]: { value, ac, av,
   * ad } }` at desired `$version` `version`, sent like `reportPatch`. A name the module's state is reported under
   * (`reportedKeys`) or starting with `$` is refused (E_INTERNAL: a programming error), so an ack never collides with
   * another reported key.
   */
  private readonly acked = new Map<string, string>();

  ackDesired(outcomes: Readonly<Record<string, AckOutcome>>, version: number): void {
    const reserved = new Set(this.opts.reportedKeys ?? []);
    for (const name of Object.keys(outcomes)) {
      if (reserved.has(name) || name.startsWith("$"))
        throw new FlotillaError(
          "E_INTERNAL",
          `${this.opts.name}: cannot acknowledge desired '${name}': the module reports its own state under it`,
        );
    }
    // An ack already sent for this value and version (the same desired document read again after a reconnect) is
    // not sent again.
    const fresh: Record<string, AckOutcome> = {};
    for (const [name, o] of Object.entries(outcomes)) {
      const key = JSON.stringify([o, version]);
      if (this.acked.get(name) === key) continue;
      this.acked.set(name, key);
      fresh[name] = o;
    }
    outcomes = fresh;
    if (Object.keys(outcomes).length === 0) return;
    // Reported patches merge: an ack without a description sends `ad: null`, which removes the description an
    // earlier ack (a refusal) left there.
    const patch: Record<string, unknown> = {};
    for (const [name, ack] of Object.entries(ackPatch(outcomes, version)))
      patch[name] = ack.ad === undefined ? { ...ack, ad: null } : ack;
    this.reportPatch(patch);
  }

  /** Queues the module's current reported patch (sent when online and the twin is known; else at reconnect). */
  private pushReported(): void {
    const reported = this.hooks.reported;
    let patch: Record<string, unknown> | undefined;
    try {
      patch = reported?.();
    } catch (e) {
      this.problem("cannot read the state to report", e);
    }
    if (!patch && Object.keys(this.extraReported).length === 0) return;
    this.reportChain = this.reportChain.then(async () => {
      const twin = this.currentTwin;
      if (!twin || !this.up) return; // sent again on the next connection
      const extra = this.extraReported;
      const full = { ...extra, ...(patch ?? {}) };
      if (Object.keys(full).length === 0) return;
      this.extraReported = {};
      try {
        await updateReported(twin, full, this.twinTimeoutMs);
        this.link?.reportedPatches.inc();
        if (patch) this.hooks.onReported?.(patch);
      } catch (e) {
        this.extraReported = { ...extra, ...this.extraReported }; // retried with the next patch
        this.log.warn(`reporting the state failed: ${errorText(e)}`, { err: e });
      }
    });
  }

  // --- methods and inputs ----------------------------------------------------------------------------------------

  private dispatch(
    name: string,
    handler: MethodHandler,
    request: MethodRequestLike | undefined,
    response: MethodResponseLike | undefined,
  ): void {
    const answer = (r: MethodResult): void => {
      this.link?.methodCalls.inc({ method: name, status: String(r.status) });
      if (!response) return;
      const failed = (e: unknown): void =>
        this.log.warn(`method response failed: ${errorText(e)}`, { method: name, err: e });
      try {
        Promise.resolve(response.send(r.status, r.payload)).catch(failed);
      } catch (e) {
        failed(e); // a response that throws at once must not escape either
      }
    };
    if (this.stopping) {
      const message = this.opts.stoppedMessage ?? `the ${this.opts.name} is stopped`;
      return answer({ status: 503, payload: { code: this.opts.stoppedCode, message } });
    }
    const fail = (e: unknown): void => {
      const err = this.errorOf(e);
      const status = this.opts.methodErrorStatus?.(err.code) ?? 400;
      this.log.log(status >= 500 ? "warn" : "info", `${name}: ${err.code}: ${err.message}`, {
        method: name,
        status,
        code: err.code,
      });
      answer({ status, payload: err });
    };
    try {
      const raw = request?.payload;
      Promise.resolve(handler(parsePayload(raw), raw)).then(answer, fail);
    } catch (e) {
      fail(e);
    }
  }

  private readonly onInput = (name: string, msg: Message): void => {
    if (this.stopping) return;
    const handler = this.opts.inputs?.[name];
    if (!handler) {
      this.log.warn(`ignoring a message on unknown input '${name}'`, { input: name });
      this.complete(msg);
      return;
    }
    try {
      handler(msg);
    } catch (e) {
      // A handler is meant to catch its own failures; this one did not. The message is not completed.
      this.problem(`input '${name}'`, e);
    }
  };

  /** Completes an input message (a failure is logged, never thrown). */
  complete(msg: Message): void {
    const c = this.client as unknown as InputClient;
    if (typeof c.complete !== "function") return;
    c.complete(msg).catch((e: unknown) =>
      this.log.warn(`completing an input message failed: ${errorText(e)}`, { err: e }),
    );
  }

  // --- output -----------------------------------------------------------------------------------------------------

  /** One output message, bounded by `timeoutMs` (the SDK's own retry may run for minutes). */
  sendOnce(outputName: string, msg: Message, timeoutMs = 60_000): Promise<void> {
    return withTimeout(this.client.sendOutputEvent(outputName, msg), timeoutMs, "sendOutputEvent").then(
      () => undefined,
    );
  }

  /**
   * Sends the messages in order, each retried with exponential backoff (min(60 s, retryDelayMs·2^(n−1))) up to
   * `attempts` times, then fails with `failCode`. Stops with the signal's reason when it aborts.
   */
  async sendWithRetry(outputName: string, messages: readonly Message[], o: SendOptions): Promise<void> {
    const signal = o.signal ?? this.stopSignal;
    const attempts = o.attempts ?? 8;
    for (const msg of messages) {
      for (let attempt = 1; ; attempt++) {
        if (signal.aborted) throw signal.reason;
        // A link taken down on purpose: the message waits for it (no attempt is spent on a closed client).
        while (!this.linkEnabled) await this.untilLinkEnabled(signal);
        try {
          await this.sendOnce(outputName, msg, o.timeoutMs);
          break;
        } catch (e) {
          if (!this.linkEnabled) {
            attempt--; // the link went down under this attempt: it does not count
            continue;
          }
          if (attempt >= attempts)
            throw new FlotillaError(
              o.failCode,
              `sending ${msg.messageId} failed ${attempt} times: ${errorText(e)}`,
              {
                cause: e,
              },
            );
          const delay = Math.min(60_000, this.retryDelayMs * 2 ** (attempt - 1));
          this.log.warn(`sending ${msg.messageId} failed (${errorText(e)}); retrying in ${delay} ms`, {
            messageId: msg.messageId,
            attempt,
            delayMs: delay,
            err: e,
          });
          await sleep(delay, signal);
        }
      }
    }
  }

  // --- link -------------------------------------------------------------------------------------------------------

  /**
   * Takes the link down (false) or brings it back (true), for a launcher that replays a device's availability.
   * Down: reconnect and twin retries stop, the module is told it is offline (`onOffline`), and the client is closed
   * (bounded: 5 s) — the connection really ends. Up: connects again as after a disconnect (twin GET, `onOnline`,
   * the reported state); resolves once that first attempt settled. Idempotent; no effect once stopped.
   */
  async setLinkEnabled(enabled: boolean): Promise<void> {
    if (this.stopping || enabled === this.linkEnabled) return;
    this.linkEnabled = enabled;
    if (!enabled) {
      if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
      this.reconnectTimer = undefined;
      if (this.twinTimer) clearTimeout(this.twinTimer);
      this.twinTimer = undefined;
      const wasUp = this.up;
      this.setUp(false);
      if (wasUp) this.hooks.onOffline?.();
      this.log.info("link taken down");
      try {
        await withTimeout(this.client.close(), 5000, "client close");
      } catch (e) {
        this.log.warn(`closing the client failed: ${errorText(e)}`, { err: e });
      }
      return;
    }
    this.log.info("link brought back");
    this.reconnectFailures = 0;
    const back = this.linkBack;
    this.linkBack = undefined;
    back?.resolve();
    await this.connect();
  }

  /** Resolves when the link is enabled again; rejects with the signal's reason when it aborts first. */
  private untilLinkEnabled(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(signal.reason);
    if (!this.linkBack) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.linkBack = { promise, resolve };
    }
    const back = this.linkBack.promise;
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      void back.then(() => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      });
    });
  }

  private async connect(): Promise<void> {
    this.reconnectTimer = undefined;
    if (this.stopping || !this.linkEnabled) return;
    this.opening = true;
    try {
      await this.client.open();
    } catch (e) {
      this.opening = false;
      this.problem("connecting failed", e);
      this.scheduleReconnect();
      return;
    }
    this.opening = false;
    this.reconnectFailures = 0;
    if (this.stopping) return;
    if (!this.linkEnabled) {
      // Taken down while opening: close what just opened.
      await withTimeout(this.client.close(), 5000, "client close").catch(() => undefined);
      return;
    }
    this.hooks.onLinkUp?.();
    await this.sync();
  }

  private scheduleReconnect(): void {
    if (this.stopping || !this.linkEnabled || this.opening || this.reconnectTimer) return;
    this.reconnectFailures++;
    const delay = this.delay(this.reconnectFailures);
    this.log.info(`reconnecting in ${delay} ms`, {
      attempt: this.reconnectFailures,
      delayMs: delay,
    });
    this.reconnectTimer = setTimeout(() => void this.connect(), delay);
  }

  private delay(failures: number): number {
    if (this.opts.reconnectDelay) return this.opts.reconnectDelay(failures);
    return Math.round(Math.min(60_000, this.retryDelayMs * 2 ** (failures - 1)) * (0.5 + Math.random() / 2));
  }

  /** After every (re)connection: the twin GET, the module's onOnline, and the reported state again. */
  private async sync(): Promise<void> {
    if (this.syncing) {
      this.resync = true;
      return;
    }
    this.syncing = true;
    try {
      do {
        this.resync = false;
        const ok = await this.readTwin();
        if (this.stopping || !this.linkEnabled) return;
        this.setUp(true);
        this.hooks.onOnline?.();
        this.reportNow();
        if (!ok) this.retryTwinLater();
      } while (this.resync && !this.stopping);
    } finally {
      this.syncing = false;
    }
  }

  /** GETs the twin and hands it to the module; true on success. */
  private async readTwin(): Promise<boolean> {
    try {
      // keepAlive: the GET decides what runs next; the stop signal ends the wait.
      const t = await withTimeout(this.client.getTwin(), this.twinTimeoutMs, "getTwin", {
        keepAlive: true,
        signal: this.stopSignal,
      });
      if (this.stopping) return false;
      const fresh = t !== this.currentTwin;
      if (fresh) {
        this.currentTwin?.removeListener("properties.desired", this.onDesired);
        this.currentTwin?.removeListener("error", this.onTwinError);
        this.currentTwin = t;
        t.on("error", this.onTwinError);
        t.on("properties.desired", this.onDesired);
      }
      await this.hooks.onTwin?.(t, fresh);
      this.twinFailures = 0;
      return true;
    } catch (e) {
      if (!this.stopping) this.problem("reading the module twin failed", e);
      return false;
    }
  }

  /** A failed twin GET is retried on its own (with backoff) while the link is up. */
  private retryTwinLater(): void {
    if (this.stopping || this.twinTimer) return;
    this.twinFailures++;
    this.twinTimer = setTimeout(() => {
      this.twinTimer = undefined;
      if (this.stopping || !this.linkEnabled || !this.up || this.syncing) return;
      void this.readTwin().then((ok) => (ok ? this.reportNow() : this.retryTwinLater()));
    }, this.delay(this.twinFailures));
  }

  private readonly onDesired = (delta: Record<string, unknown>): void => {
    const twin = this.currentTwin;
    if (this.stopping || !twin || typeof delta !== "object" || delta === null) return;
    try {
      this.hooks.onDesiredPatch?.(delta, twin);
    } catch (e) {
      this.problem("applying desired properties failed", e);
    }
  };
  private readonly onTwinError = (err: Error): void => {
    if (!this.stopping) this.problem("twin error", err);
  };
  private readonly onConnect = (): void => {
    // The SDK reconnected by itself (or open() is connecting): either way the twin must be read again.
    if (this.stopping || !this.linkEnabled) return;
    this.hooks.onLinkUp?.();
    if (this.opening) return;
    void this.sync();
  };
  private readonly onDisconnect = (err?: unknown): void => {
    if (this.stopping || !this.linkEnabled) return;
    this.setUp(false);
    this.problem("disconnected", err);
    this.hooks.onOffline?.();
    this.scheduleReconnect();
  };
  private readonly onError = (err?: unknown): void => {
    if (this.stopping || !this.linkEnabled) return;
    this.problem("client error", err);
    if (this.opts.errorIsDisconnect) {
      this.setUp(false);
      this.hooks.onOffline?.();
      this.scheduleReconnect();
    }
  };

  /** Logs a link problem on one line (`name: what: CODE: message`) and tells the module. */
  private problem(what: string, e: unknown): void {
    const text = e === undefined ? what : `${what}: ${errorText(e)}`;
    this.log.warn(text, e === undefined ? {} : { err: e });
    this.hooks.onProblem?.(text);
  }

  errorOf(e: unknown): { code: string; message: string } {
    if (isFlotillaError(e)) return { code: e.code, message: e.message };
    const f = errorFields(e);
    return { code: f.code ?? this.opts.internalCode ?? "E_INTERNAL", message: f.error };
  }

  // --- stop -------------------------------------------------------------------------------------------------------

  /**
   * Stops: no new input or method work (methods answer 503), the stop signal aborts, the module drains (`drain`),
   * the reported patches queued so far (and a final one with `finalReport`) go out within 2 s, listeners are
   * removed, and the client is closed when the module owns it. Idempotent.
   */
  async stop(
    o: { readonly drain?: () => Promise<void>; readonly finalReport?: boolean } = {},
  ): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.twinTimer) clearTimeout(this.twinTimer);
    this.reporter?.cancel();
    this.stopController.abort(
      new FlotillaError(
        this.opts.stoppedCode,
        this.opts.stoppedMessage ?? `the ${this.opts.name} is stopping`,
      ),
    );
    if (this.opts.inputs)
      (this.client as unknown as InputClient).removeListener("inputMessage", this.onInput);
    try {
      await o.drain?.();
    } catch (e) {
      this.log.warn(`stopping: ${errorText(e)}`, { err: e });
    }
    if (o.finalReport) this.pushReported();
    // The last reported state goes out before the client closes.
    await withTimeout(this.reportChain, 2000, "reported state").catch(() => undefined);
    this.client.removeListener("connect", this.onConnect);
    this.client.removeListener("disconnect", this.onDisconnect);
    // The "error" listeners stay (inert): unsubscribing inputs may fail, which the SDK emits as "error" — with no
    // listener that would throw.
    this.currentTwin?.removeListener("properties.desired", this.onDesired);
    this.up = false;
    this.link?.linkUp.set(0);
    if (this.opts.closeClient) {
      try {
        // close() never settles while the SDK is reconnecting: bounded.
        await withTimeout(this.client.close(), 5000, "client close");
      } catch (e) {
        this.log.warn(`closing the client failed: ${errorText(e)}`, { err: e });
      }
    }
  }
}

/** Resolves on the first SIGTERM or SIGINT. */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (s: NodeJS.Signals): void => {
      process.off("SIGTERM", on);
      process.off("SIGINT", on);
      resolve(s);
    };
    process.once("SIGTERM", on);
    process.once("SIGINT", on);
  });
}

/**
 * The container entry of a module: its logger from FLOTILLA_LOG_LEVEL/FLOTILLA_LOG_FORMAT, `start` (configuration,
 * client, module), then SIGTERM/SIGINT, a graceful stop and exit (at once: the SDK may still be retrying against an
 * unreachable hub, its retry policy runs for minutes). A start-up failure is one line with its code, exit code 1.
 */
export function runModule(
  name: string,
  start: (log: Logger) => Promise<{ stop(): Promise<void> }>,
  env: NodeJS.ProcessEnv = process.env,
): void {
  let log: Logger;
  try {
    log = loggerFromEnv(name, env);
  } catch (e) {
    console.error(`${name}: ${errorText(e)}`);
    process.exit(1);
  }
  const main = async (): Promise<void> => {
    const module = await start(log);
    log.info("running");
    const signal = await untilSignal();
    log.info(`stopping (${signal})`);
    await module.stop();
  };
  main().then(
    () => process.exit(0),
    (e: unknown) => {
      log.error(errorText(e), { code: errorFields(e).code });
      process.exit(1);
    },
  );
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<void>((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal.reason);
    };
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
