/**
 * The simulator's driver of asynchronous rounds (FedBuff, Nguyen et al. AISTATS 2022): the async engine
 * (core/round/async-engine.ts) holds the job's state and says what to do; this driver keeps C devices training
 * (it asks `opts.pick` whom to order, so any selector plugs in), sends them the current global model through the
 * transport, takes their updates from the clock (core/round/clock.ts: RealClock, or a fleet trace's virtual clock),
 * and, each time the buffer holds K updates, aggregates them with their staleness weights through the strategy
 * (Σ n_k s(τ_k) Δ_k / Σ n_k into the strategy's server optimizer, FitResult.discount) into the next version.
 *
 * A device's train frame is the synchronous one (core/round/frames.ts) with `round` = the version it trains from,
 * so devices need no change; its result frame comes back with that round, which is the update's base version.
 *
 * Not supported, refused before anything is sent: secure aggregation (E_ASYNC_SECAGG: SecAgg+ runs its four steps
 * over a fixed cohort, and a buffer's members are whoever finished first, each from another version) and
 * distributed DP (it relies on secure aggregation). Central and local DP work: each flush is one release,
 * accounted as one step at sampling rate q = K / N (docs/async.md explains why that is an approximation).
 */
import { FlotillaError, errorCode, errorMessage } from "../errors";
import type { DeviceMessage, SecAggFrame } from "../protocol/messages";
import type { ServerTransport } from "../protocol/transport";
import type { FitFailure, FitInstruction, FitResult, Strategy } from "../strategies/strategy";
import type { EncodedTensor } from "../compress/api";
import { nonFiniteModelReason } from "../tensor/finite";
import {
  openAsync,
  stepAsync,
  type AsyncCounters,
  type AsyncDecision,
  type AsyncEvent,
  type AsyncState,
  type BufferEntry,
} from "./async-engine";
import type { RoundClock } from "./clock";
import { RoundCloser } from "./close";
import { beginRoundAggregation } from "./aggregation";
import { decodeDeviceFrame, trainFrame } from "./frames";
import { downlinkModel, type JobOptions, type ModelRecord } from "./server";

/** One flush: a new global model version. */
export interface AsyncRecord extends ModelRecord {
  /** The version this flush produced (1, 2, ...). */
  readonly round: number;
  /** Orders that failed or timed out since the previous flush. */
  readonly failures: FitFailure[];
  /** Devices whose update is in this version, in buffer order. */
  readonly applied: string[];
  /** The staleness τ of each applied update (same order). */
  readonly staleness: number[];
  /** Updates refused since the previous flush (E_ASYNC_STALE, unexpected, or refused by the aggregation). */
  readonly refused: FitFailure[];
  /** The engine's counters after this flush (ordered, applied, refusedStale, timeouts, failures, late, ...). */
  readonly counters: AsyncCounters;
}

export interface AsyncServerEvents {
  /** A version starts collecting updates (after the previous flush); `training` = devices in flight. */
  onRoundStart?(version: number, training: readonly string[]): void;
  /** Devices were ordered to train from `baseVersion`. */
  onOrdered?(baseVersion: number, deviceIds: readonly string[]): void;
  /** A device's update was buffered (ok) or refused, or its order failed or timed out (not ok). */
  onDeviceDone?(version: number, deviceId: string, ok: boolean): void;
  onRoundEnd?(record: AsyncRecord): void;
  /** A frame or update that was rejected (malformed, unexpected, too stale): logged and counted, never fatal. */
  onRejected?(code: string, reason: string): void;
  /** The global model is not finite after `version` (0: the initial model); the job stops. */
  onDiverged?(version: number, reason: string): void;
}

export interface AsyncJobOptions extends Pick<
  JobOptions,
  | "jobId"
  | "layout"
  | "evaluate"
  | "abortSignal"
  | "uplink"
  | "downlink"
  | "dp"
  | "secureAggregation"
  | "aggregator"
  | "rootUpdate"
  | "interceptor"
  | "observe"
> {
  /** Flushes to run (the job stops after version `versions`). */
  readonly versions: number;
  /** C: devices kept training. */
  readonly concurrency: number;
  /** K: updates per flush. */
  readonly buffer: number;
  /** Updates staler than this are refused (E_ASYNC_STALE). */
  readonly maxStaleness: number;
  /** Staleness function spec (core/round/staleness.ts); default poly:0.5 = 1/√(1+τ). */
  readonly staleness?: string;
  /** A device's order times out after this long (its late update still counts while fresh enough). */
  readonly trainTimeoutInMs: number;
  /**
   * Picks up to `count` devices to order now, none of `exclude` (those training already, those whose update waits
   * in the buffer, those whose order could not be sent just now), each with its training config; `version` is the
   * version they will train from. May return fewer (or none: the driver asks again). A version needs K updates, so
   * K must not exceed the devices that can deliver: with fewer, the job waits for them (or its abort signal).
   */
  pick(
    count: number,
    exclude: ReadonlySet<string>,
    version: number,
  ): Promise<FitInstruction[]> | FitInstruction[];
  /** When nothing is in flight and `pick` gave nobody, ask again after this long (default 1000 ms). */
  readonly idleRetryInMs?: number;
  readonly events?: AsyncServerEvents;
}

/** Refuses what asynchronous rounds cannot do (E_ASYNC_SECAGG, E_DP_CONFIG) and bad options (E_ASYNC_CONFIG). */
export function checkAsyncJob(opts: Pick<AsyncJobOptions, "secureAggregation" | "dp" | "buffer">): void {
  if (opts.secureAggregation)
    throw new FlotillaError(
      "E_ASYNC_SECAGG",
      "secure aggregation cannot run with asynchronous rounds: a buffer's updates come from whoever finished first, " +
        "each from another model version, not from a fixed cohort that can run SecAgg+'s four steps together",
    );
  const dp = opts.dp;
  if (!dp) return;
  if (dp.options.placement === "distributed")
    throw new FlotillaError(
      "E_ASYNC_SECAGG",
      "distributed DP needs secure aggregation, which asynchronous rounds cannot run (use central or local DP)",
    );
  if (dp.options.clientsPerRound !== opts.buffer)
    throw new FlotillaError(
      "E_DP_CONFIG",
      `asynchronous DP accounts each flush of K=${opts.buffer} updates as one step at q = K / fleet size: ` +
        `its clients per round must be ${opts.buffer}, got ${dp.options.clientsPerRound}`,
    );
}

type Update = FitResult & { readonly layoutHash?: string };

/**
 * Runs an asynchronous (FedBuff) job until `versions` flushes, the abort signal, the DP budget or a non-finite
 * model; returns one record per flush.
 */
export async function runAsyncJob(
  strategy: Strategy,
  transport: ServerTransport,
  clock: RoundClock,
  opts: AsyncJobOptions,
): Promise<AsyncRecord[]> {
  checkAsyncJob(opts);
  let state: AsyncState = openAsync({
    jobId: opts.jobId,
    concurrency: opts.concurrency,
    buffer: opts.buffer,
    maxStaleness: opts.maxStaleness,
    ...(opts.staleness !== undefined ? { staleness: opts.staleness } : {}),
  });
  const ev = opts.events;
  const records: AsyncRecord[] = [];
  /** The last global step: centered clipping's reference. */
  let previousStep: Float32Array | undefined;
  const diverged = (version: number): boolean => {
    const reason = nonFiniteModelReason(strategy.weights, version, opts.layout);
    if (reason !== undefined) ev?.onDiverged?.(version, reason);
    return reason !== undefined;
  };
  if (diverged(0)) return records;

  /** Updates in the buffer, by update id (at most K plus those that came during a flush). */
  const pending = new Map<string, Update>();
  let seq = 0;
  let model: { version: number; weights: Float32Array | EncodedTensor; modelHash: string } | undefined;
  const dpOrder = opts.dp?.deviceOrder(false);
  let since = {
    refused: [] as FitFailure[],
    failures: [] as FitFailure[],
    up: transport.stats.uplinkBytes,
    down: transport.stats.downlinkBytes,
    at: clock.now(),
  };
  /** Devices whose order could not be sent since the clock last moved (not picked again until it does). */
  let unreachable = new Set<string>();
  let stop = false;
  const done = (): boolean => stop || records.length >= opts.versions || opts.abortSignal?.aborted === true;

  const queue: AsyncDecision[] = [];
  const advance = (e: AsyncEvent): void => {
    const r = stepAsync(state, e);
    state = r.state;
    queue.push(...r.decisions);
  };

  const order = async (count: number): Promise<void> => {
    const version = state.version;
    // Not while its update waits in the buffer (one update per device and flush: the aggregation takes one per
    // device, and DP's ledger counts devices).
    const exclude = new Set([
      ...Object.keys(state.inFlight),
      ...state.entries.map((e) => e.deviceId),
      ...unreachable,
    ]);
    const picked = (await opts.pick(count, exclude, version))
      .filter(
        (p, i, all) => !exclude.has(p.deviceId) && all.findIndex((q) => q.deviceId === p.deviceId) === i,
      )
      .slice(0, count);
    if (picked.length === 0) return;
    if (!model || model.version !== version)
      model = { version, ...downlinkModel(strategy.weights, version, opts) };
    const now = clock.now();
    const deadline = now + opts.trainTimeoutInMs;
    const failed: { id: string; code: string; reason: string }[] = [];
    for (const ins of picked) {
      const frame = trainFrame({
        jobId: opts.jobId,
        round: version,
        modelHash: model.modelHash,
        layoutHash: opts.layout.hash,
        config: ins.config,
        deadline,
        weights: model.weights,
        uplink: opts.uplink,
        dp: dpOrder,
      });
      try {
        await transport.send(ins.deviceId, frame);
      } catch (e) {
        failed.push({ id: ins.deviceId, code: errorCode(e), reason: errorMessage(e) });
      }
    }
    const ids = picked.map((p) => p.deviceId);
    advance({ type: "ordered", devices: ids, baseVersion: version, now, deadline });
    ev?.onOrdered?.(version, ids);
    for (const f of failed) {
      unreachable.add(f.id);
      since.failures.push({ deviceId: f.id, code: f.code, reason: f.reason });
      advance({ type: "failure", deviceId: f.id, baseVersion: version, code: f.code, reason: f.reason, now });
      ev?.onDeviceDone?.(version, f.id, false);
    }
  };

  const flush = async (entries: readonly BufferEntry[]): Promise<void> => {
    const next = state.version + 1;
    const global = strategy.weights;
    const aggregation = beginRoundAggregation(strategy, next, {
      layoutHash: opts.layout.hash,
      ...(opts.dp ? { dp: opts.dp } : {}),
      ...(opts.aggregator ? { aggregator: opts.aggregator } : {}),
      ...(opts.aggregator?.rule === "fltrust" && opts.rootUpdate
        ? { rootDelta: await opts.rootUpdate(global, next) }
        : {}),
      ...(previousStep ? { reference: previousStep } : {}),
      ...(opts.interceptor ? { interceptor: opts.interceptor } : {}),
      ...(opts.observe ? { observe: true } : {}),
    });
    const before = opts.aggregator?.rule === "centered-clip" ? global.slice() : undefined;
    const closer = new RoundCloser({ round: next, aggregation, layoutHash: opts.layout.hash });
    for (const e of entries) {
      const u = pending.get(e.updateId);
      pending.delete(e.updateId);
      if (!u) continue;
      const refused = closer.update({ ...u, discount: e.weight });
      if (refused) {
        since.refused.push(refused);
        ev?.onRejected?.(refused.code, refused.reason);
      }
    }
    const out = closer.finish([]);
    if (out.weights !== strategy.weights) strategy.weights.set(out.weights);
    if (before) previousStep = Float32Array.from(strategy.weights, (w, i) => w - before[i]!);
    const endedAt = clock.now();
    advance({ type: "flushed", newVersion: next, now: endedAt });
    const metrics = opts.evaluate ? await opts.evaluate(strategy.weights) : { loss: NaN, accuracy: NaN };
    const applied = new Set(out.completed);
    const kept = entries.filter((e) => applied.has(e.deviceId));
    const dp = opts.dp?.lastRound;
    const record: AsyncRecord = {
      round: next,
      applied: kept.map((e) => e.deviceId),
      staleness: kept.map((e) => e.staleness),
      refused: since.refused,
      failures: since.failures,
      accuracy: metrics.accuracy,
      loss: metrics.loss,
      trainLoss: out.metrics.trainLoss,
      trainAccuracy: out.metrics.trainAccuracy,
      uplinkBytes: transport.stats.uplinkBytes - since.up,
      downlinkBytes: transport.stats.downlinkBytes - since.down,
      startedAt: since.at,
      endedAt,
      counters: state.counters,
      ...(opts.dp && dp ? { dp } : {}),
      ...(out.robust ? { robust: out.robust } : {}),
      ...(out.observed ? { observed: out.observed } : {}),
    };
    records.push(record);
    ev?.onRoundEnd?.(record);
    since = {
      refused: [],
      failures: [],
      up: transport.stats.uplinkBytes,
      down: transport.stats.downlinkBytes,
      at: endedAt,
    };
    if (diverged(next)) stop = true;
    else if (!done()) ev?.onRoundStart?.(state.version + 1, Object.keys(state.inFlight));
  };

  /** Carries out the queued decisions (and those they lead to) in order. */
  const drain = async (): Promise<void> => {
    for (let d = queue.shift(); d !== undefined; d = queue.shift()) {
      if (done()) {
        queue.length = 0;
        return;
      }
      switch (d.type) {
        case "order": {
          // Decisions queued by earlier events may be out of date: order only what is free now.
          const free = state.concurrency - Object.keys(state.inFlight).length;
          if (state.status === "running" && !state.paused && free > 0) await order(Math.min(d.count, free));
          break;
        }
        case "flush":
          if (opts.dp && !opts.dp.allowsNextRound()) {
            stop = true; // the DP budget: this flush would exceed it (opts.dp.status says so)
            break;
          }
          await flush(d.entries);
          break;
        case "refuse": {
          pending.delete(d.updateId);
          since.refused.push({ deviceId: d.deviceId, code: d.code, reason: d.reason });
          ev?.onRejected?.(d.code, d.reason);
          ev?.onDeviceDone?.(state.version, d.deviceId, false);
          break;
        }
        case "timedOut":
          for (const id of d.devices) {
            since.failures.push({
              deviceId: id,
              code: "E_ROUND_TIMEOUT",
              reason: "no update before the order's deadline (a late update still counts)",
            });
            ev?.onDeviceDone?.(state.version, id, false);
          }
          break;
      }
    }
  };

  const receive = (frame: Uint8Array, at: number): void => {
    let msg: Exclude<DeviceMessage, SecAggFrame>;
    try {
      msg = decodeDeviceFrame(frame);
    } catch (e) {
      ev?.onRejected?.(errorCode(e), errorMessage(e));
      return;
    }
    if (msg.jobId !== opts.jobId) {
      ev?.onRejected?.("E_PROTO_STALE", `update from '${msg.deviceId}' for job ${msg.jobId} is not expected`);
      return;
    }
    if (msg.type === "failure") {
      const before = state;
      advance({
        type: "failure",
        deviceId: msg.deviceId,
        baseVersion: msg.round,
        code: msg.code,
        reason: msg.reason,
        now: at,
      });
      if (state !== before) {
        since.failures.push({ deviceId: msg.deviceId, code: msg.code, reason: msg.reason });
        ev?.onDeviceDone?.(state.version, msg.deviceId, false);
      }
      return;
    }
    const updateId = `${msg.deviceId}/${msg.round}/${++seq}`;
    pending.set(updateId, msg);
    advance({
      type: "updateReceived",
      deviceId: msg.deviceId,
      baseVersion: msg.round,
      update: { updateId, numSamples: msg.numSamples, at },
    });
    if (state.entries.some((e) => e.updateId === updateId))
      ev?.onDeviceDone?.(state.version, msg.deviceId, true);
    else if (!queue.some((d) => d.type === "refuse" && d.updateId === updateId)) pending.delete(updateId);
  };

  ev?.onRoundStart?.(1, []);
  advance({ type: "tick", now: clock.now() });
  await drain();
  while (!done() && !(opts.dp && opts.dp.status.state === "budget-exhausted")) {
    const deadlines = Object.values(state.inFlight).map((f) => f.deadline);
    const idle = deadlines.length === 0 && state.status === "running";
    const until = idle ? clock.now() + (opts.idleRetryInMs ?? 1000) : Math.min(Infinity, ...deadlines);
    const arrival = await clock.next(until, opts.abortSignal);
    unreachable = new Set();
    if (arrival) receive(arrival.frame, arrival.at);
    advance({ type: "tick", now: arrival ? arrival.at : clock.now() });
    await drain();
  }
  return records;
}
