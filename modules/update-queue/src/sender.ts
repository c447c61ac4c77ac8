import { EventEmitter } from "node:events";
import { FlotillaError, fail, isFlotillaError } from "../../../core/errors";
import { backoffDelay, checkBackoff, type BackoffOptions } from "./backoff";
import type { Outbox, OutboxChunk } from "./outbox";

/**
 * Drains an Outbox through an injected `send` (in the module: ModuleClient.sendOutputEvent to the `upstream`
 * output). Updates go out oldest first, at most `concurrency` at a time, each one's chunks in order. A failed send
 * pauses everything for an exponential backoff with jitter; `setOnline(false)` pauses until the link is back. An
 * update sent completely but not acknowledged within `resendAfterMs` is sent again, and so is everything
 * unacknowledged after `start()` (process restart) and `resendUnacked()` (reconnect). Sending twice is harmless by
 * design: the cloud deduplicates on updateId + chunkIndex (the messageId).
 *
 * `setUploadLimit(bytes)` (a metered link, docs/operations.md "Update-queue and quantizer properties") defers every
 * update larger than `bytes`: it is neither started nor resent, and one being sent stops before its next chunk (its
 * progress is kept); `setUploadLimit(undefined)` sends them again.
 */

export type SendChunk = (chunk: OutboxChunk) => Promise<void>;

export interface SenderOptions {
  send: SendChunk;
  /** Updates in flight at once; 1 = strictly sequential. */
  concurrency?: number;
  /** Resend an update not acknowledged this long after it was sent completely, in ms. */
  resendAfterMs?: number;
  backoff?: BackoffOptions;
  /** A send that has not settled after this long counts as failed, in ms (0 = wait forever). */
  sendTimeoutMs?: number;
  /** Whether the link is up at construction. */
  online?: boolean;
  random?: () => number;
  now?: () => number;
}

export const SENDER_DEFAULTS = {
  concurrency: 1,
  resendAfterMs: 10 * 60_000,
  sendTimeoutMs: 5 * 60_000,
};

export interface SenderEvents {
  /** One chunk was handed to the transport. */
  chunk: [{ updateId: string; chunkIndex: number; chunkCount: number; bytes: number }];
  /** Every chunk of an update went out; it now waits for the ack. */
  sent: [{ updateId: string; attempt: number; chunkCount: number; resend: boolean }];
  /** A send failed; nothing is sent for `delayMs`. */
  retry: [{ updateId: string; error: unknown; failures: number; delayMs: number }];
  /** An update was given up because its stored bytes are damaged. */
  dropped: [{ updateId: string; reason: "corrupt"; error: unknown }];
  /** The outbox itself failed (e.g. disk error); the sender backs off and tries again. */
  fault: [{ error: unknown; delayMs: number }];
  /** Nothing in flight and nothing due (or offline/stopped). */
  idle: [];
}

export class Sender extends EventEmitter<SenderEvents> {
  private readonly send: SendChunk;
  private readonly concurrency: number;
  private readonly backoff: Required<BackoffOptions>;
  private readonly sendTimeoutMs: number;
  private readonly random: () => number;
  private readonly now: () => number;
  private resendMs: number;
  /** Updates larger than this wait (a metered link); MAX_SAFE_INTEGER: no limit. */
  private maxUpload = Number.MAX_SAFE_INTEGER;
  private linkUp: boolean;
  /** Until start(): nothing is sent. */
  private stopped = true;
  private failures = 0;
  private backoffUntil = 0;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private readonly inflight = new Map<string, Promise<void>>();
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly outbox: Outbox,
    options: SenderOptions,
  ) {
    super();
    if (typeof options.send !== "function") fail("E_QUEUE_CONFIG", "Sender needs a send function");
    this.send = options.send;
    this.concurrency = options.concurrency ?? SENDER_DEFAULTS.concurrency;
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1) {
      fail("E_QUEUE_CONFIG", `concurrency ${String(options.concurrency)} must be a positive integer`);
    }
    this.resendMs = checkResendAfter(options.resendAfterMs ?? SENDER_DEFAULTS.resendAfterMs);
    this.backoff = checkBackoff(options.backoff ?? {}, "sender backoff");
    this.sendTimeoutMs = options.sendTimeoutMs ?? SENDER_DEFAULTS.sendTimeoutMs;
    if (!Number.isFinite(this.sendTimeoutMs) || this.sendTimeoutMs < 0) {
      fail("E_QUEUE_CONFIG", `sendTimeoutMs ${String(options.sendTimeoutMs)} must be ≥ 0`);
    }
    this.linkUp = options.online ?? true;
    this.random = options.random ?? Math.random;
    this.now = options.now ?? Date.now;
  }

  get online(): boolean {
    return this.linkUp;
  }

  get resendAfterMs(): number {
    return this.resendMs;
  }

  /** Updates being sent right now. */
  get inFlight(): number {
    return this.inflight.size;
  }

  /** Starts draining. Everything sent before but not acknowledged is sent again (the process restarted). */
  start(): void {
    this.stopped = false;
    this.guard(() => this.outbox.requeueUnacked());
    this.pump();
  }

  /** Link state from the transport. Offline: no new chunk starts; an interrupted update resumes where it was. */
  setOnline(online: boolean): void {
    this.linkUp = online;
    this.pump();
  }

  /** After a reconnect: send everything not acknowledged again, now. */
  resendUnacked(): void {
    this.guard(() => this.outbox.requeueUnacked());
    this.pump();
  }

  /** Updates larger than `bytes` are deferred (undefined: none is). Takes effect at once. */
  setUploadLimit(bytes: number | undefined): void {
    if (bytes !== undefined && (!Number.isSafeInteger(bytes) || bytes < 0))
      fail("E_QUEUE_CONFIG", `upload limit ${String(bytes)} must be a non-negative integer`);
    this.maxUpload = bytes ?? Number.MAX_SAFE_INTEGER;
    this.clearTimer();
    this.pump();
  }

  /** The largest update sent now (undefined: no limit). */
  get uploadLimit(): number | undefined {
    return this.maxUpload === Number.MAX_SAFE_INTEGER ? undefined : this.maxUpload;
  }

  setResendAfterMs(ms: number): void {
    this.resendMs = checkResendAfter(ms);
    this.clearTimer();
    this.pump();
  }

  /** New work may be there (an update was enqueued, an ack freed a slot). */
  kick(): void {
    this.pump();
  }

  /** Resolves once nothing is in flight and nothing is due now (or the sender is offline or stopped). */
  whenIdle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Stops sending: no new chunk starts; waits up to `graceMs` for the sends in flight. A send that settles later
   * is not recorded (it will be sent again, harmlessly), so the outbox can be closed once this resolves.
   */
  async stop(graceMs = 5000): Promise<void> {
    this.stopped = true;
    this.clearTimer();
    const all = Promise.allSettled([...this.inflight.values()]);
    let t: NodeJS.Timeout | undefined;
    await Promise.race([all, new Promise<void>((r) => (t = setTimeout(r, graceMs)))]);
    clearTimeout(t);
    this.inflight.clear();
    this.resolveIdle();
  }

  private pump(): void {
    if (this.stopped || !this.linkUp) {
      this.clearTimer();
      if (this.inflight.size === 0) this.resolveIdle();
      return;
    }
    const now = this.now();
    if (now < this.backoffUntil) {
      this.wakeAt(this.backoffUntil);
      return;
    }
    const ok = this.guard(() => {
      while (this.inflight.size < this.concurrency) {
        const due = this.outbox.due(
          now - this.resendMs,
          this.concurrency + this.inflight.size,
          this.maxUpload,
        );
        const next = due.find((u) => !this.inflight.has(u.updateId));
        if (!next) break;
        this.startWorker(next.updateId);
      }
      if (this.inflight.size === 0) {
        const oldest = this.outbox.oldestSentAt(this.maxUpload);
        if (oldest !== undefined) this.wakeAt(oldest + this.resendMs);
      }
    });
    if (ok && this.inflight.size === 0) this.resolveIdle();
  }

  private startWorker(updateId: string): void {
    const run = this.work(updateId)
      .catch((error: unknown) => this.failed(updateId, error))
      .finally(() => {
        if (this.inflight.get(updateId) === run) this.inflight.delete(updateId);
        this.pump();
      });
    this.inflight.set(updateId, run);
  }

  private async work(updateId: string): Promise<void> {
    let plan;
    try {
      plan = this.outbox.beginAttempt(updateId);
    } catch (error) {
      if (isFlotillaError(error) && error.code === "E_QUEUE_CORRUPT") {
        this.outbox.dropCorrupt(updateId);
        this.emit("dropped", { updateId, reason: "corrupt", error });
        return;
      }
      throw error;
    }
    if (!plan) return;
    const { chunks, startChunk, attempt } = plan;
    const size = chunks.reduce((n, c) => n + c.body.byteLength, 0);
    for (let i = startChunk; i < chunks.length; i++) {
      if (this.paused() || size > this.maxUpload) return; // deferred meanwhile: resumes from chunk i later
      await this.sendOne(chunks[i]);
      if (this.stopped) return;
      this.failures = 0;
      this.emit("chunk", {
        updateId,
        chunkIndex: i,
        chunkCount: chunks.length,
        bytes: chunks[i].body.byteLength,
      });
      if (!this.outbox.markChunkSent(updateId, i)) return; // acked or dropped meanwhile
    }
    const before = this.outbox.get(updateId);
    if (this.outbox.markSent(updateId)) {
      this.emit("sent", {
        updateId,
        attempt,
        chunkCount: chunks.length,
        resend: (before?.sentCount ?? 0) > 0,
      });
    }
  }

  private paused(): boolean {
    return this.stopped || !this.linkUp || this.now() < this.backoffUntil;
  }

  private async sendOne(chunk: OutboxChunk): Promise<void> {
    if (this.sendTimeoutMs === 0) return this.send(chunk);
    let t: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      t = setTimeout(
        () => reject(new FlotillaError("E_QUEUE_SEND_TIMEOUT", `send of ${chunk.messageId} did not settle`)),
        this.sendTimeoutMs,
      );
    });
    try {
      await Promise.race([this.send(chunk), timeout]);
    } finally {
      clearTimeout(t);
    }
  }

  private failed(updateId: string, error: unknown): void {
    if (this.stopped) return;
    this.failures++;
    const delayMs = backoffDelay(this.failures, this.backoff, this.random);
    this.backoffUntil = Math.max(this.backoffUntil, this.now() + delayMs);
    this.emit("retry", { updateId, error, failures: this.failures, delayMs });
  }

  /** Runs an outbox operation outside a send; a failure backs off like a failed send. */
  private guard(fn: () => void): boolean {
    try {
      fn();
      return true;
    } catch (error) {
      this.failures++;
      const delayMs = backoffDelay(this.failures, this.backoff, this.random);
      this.backoffUntil = this.now() + delayMs;
      this.emit("fault", { error, delayMs });
      if (!this.stopped) this.wakeAt(this.backoffUntil);
      return false;
    }
  }

  private wakeAt(t: number): void {
    if (this.stopped) return;
    if (this.timer && this.timerAt <= t) return;
    this.clearTimer();
    this.timerAt = t;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.timerAt = Infinity;
        this.pump();
      },
      Math.max(0, t - this.now()),
    );
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Infinity;
  }

  private isIdle(): boolean {
    if (this.inflight.size > 0) return false;
    if (this.stopped || !this.linkUp) return true;
    if (this.now() < this.backoffUntil) return false;
    try {
      return this.outbox.due(this.now() - this.resendMs, 1, this.maxUpload).length === 0;
    } catch {
      return false;
    }
  }

  private resolveIdle(): void {
    if (!this.isIdle()) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
    this.emit("idle");
  }
}

function checkResendAfter(ms: number): number {
  if (!Number.isFinite(ms) || ms < 1) fail("E_QUEUE_CONFIG", `resendAfterMs ${String(ms)} must be ≥ 1`);
  return ms;
}
