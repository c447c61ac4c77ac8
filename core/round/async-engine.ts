/**
 * The asynchronous mode of the round engine: FedBuff (Nguyen et al., "Federated Learning with Buffered
 * Asynchronous Aggregation", AISTATS 2022, Algorithm 1) as a pure state machine, in the style of the synchronous
 * engine (core/round/engine.ts) and driven the same way: by core/round/async-server.ts in the simulator and by
 * the Function's orchestrator (its state JSON in Blob Storage, written with ETag conditions).
 *
 * There are no rounds. The server keeps C devices training at all times (`concurrency`); each trains from the
 * global model version it was sent (its base version) and its update, when it arrives at version v, has staleness
 * τ = v − base. Updates go into a buffer with weight s(τ) (core/round/staleness.ts); when the buffer holds K
 * updates (`buffer`) the driver aggregates them into the next version (core/round/async-server.ts: FedBuff's
 * server step Δ = η_g · Σ n_k s(τ_k) Δ_k / Σ n_k through the strategy's server optimizer). An update with
 * τ > maxStaleness is refused (E_ASYNC_STALE) and counted.
 *
 *   running     an order is due whenever fewer than C devices are in flight; a buffer of K asks for a flush
 *   flushing    the driver is aggregating a buffer; updates still arrive (they wait in the buffer), no new orders
 *               until the flush is reported (a device ordered now would start from the version being replaced)
 *   paused      (beside either) the job was stopped: nothing is ordered or flushed, updates are kept; when it
 *               runs again every in-flight deadline moves by the time it was stopped
 *
 * `stepAsync(state, event) → { state, decisions }` is pure and returns the very same state object when the event
 * changes nothing. The engine never picks devices: an `order` decision says how many, the driver picks them with
 * its selector and reports them with `ordered`. A device whose order timed out is not forgotten at once: its late
 * update (a device that lost its link finishes, queues the update and delivers it when it reconnects) still
 * counts with its staleness, until it is older than maxStaleness.
 */
import { fail } from "../errors";
import { DEFAULT_STALENESS_SPEC, parseStaleness, stalenessWeight } from "./staleness";

/** A device training for the job: the version it started from, when it was ordered and its deadline (ms). */
export interface InFlight {
  readonly baseVersion: number;
  readonly orderedAt: number;
  readonly deadline: number;
}

/** An update waiting in the buffer. */
export interface BufferEntry {
  readonly deviceId: string;
  readonly updateId: string;
  readonly baseVersion: number;
  /** τ = version at arrival − baseVersion. */
  readonly staleness: number;
  /** s(τ), the update's staleness weight. */
  readonly weight: number;
  readonly numSamples: number;
  readonly at: number;
}

export interface AsyncCounters {
  /** Orders sent (device × order). */
  readonly ordered: number;
  /** Updates flushed into a new version. */
  readonly applied: number;
  /** Updates refused for τ > maxStaleness (E_ASYNC_STALE). */
  readonly refusedStale: number;
  /** Orders whose deadline passed before an update came. */
  readonly timeouts: number;
  /** Failure frames (and orders that could not be sent). */
  readonly failures: number;
  /** Updates that arrived after their order's deadline (counted or refused like any other). */
  readonly late: number;
  /** Updates nobody ordered (no order for that device and base version): refused with E_PROTO_STALE. */
  readonly unexpected: number;
}

export interface AsyncState {
  readonly mode: "async";
  readonly jobId: string;
  /** The global model version: the number of buffers flushed so far. */
  readonly version: number;
  /** C: devices kept training. */
  readonly concurrency: number;
  /** K: updates per flush. */
  readonly buffer: number;
  /** Updates with τ above this are refused. */
  readonly maxStaleness: number;
  /** The staleness function's spec (core/round/staleness.ts), e.g. "poly:0.5". */
  readonly staleness: string;
  /** running, or flushing: a flush decision was made and its `flushed` has not come yet. */
  readonly status: "running" | "flushing";
  readonly inFlight: Readonly<Record<string, InFlight>>;
  /** Orders whose deadline passed: device → base version (a late update from it is still taken). */
  readonly expired: Readonly<Record<string, number>>;
  /** The buffer, in arrival order. */
  readonly entries: readonly BufferEntry[];
  readonly counters: AsyncCounters;
  /** Set while the job is stopped: since when (nothing is ordered or flushed; updates are kept). */
  readonly paused?: { readonly at: number };
}

/** A received update as the engine sees it (the driver keeps the update itself). */
export interface AsyncUpdate {
  readonly updateId: string;
  readonly numSamples: number;
  readonly at: number;
}

export type AsyncEvent =
  /** Time passed: in-flight deadlines that passed become timeouts. */
  | { readonly type: "tick"; readonly now: number }
  /** The driver sent these devices an order to train from `baseVersion` (the current version). */
  | {
      readonly type: "ordered";
      readonly devices: readonly string[];
      readonly baseVersion: number;
      readonly now: number;
      readonly deadline: number;
    }
  /** A device's update trained from `baseVersion` arrived. */
  | {
      readonly type: "updateReceived";
      readonly deviceId: string;
      readonly baseVersion: number;
      readonly update: AsyncUpdate;
    }
  /** A device answered its order with a failure (or its order could not be sent). */
  | {
      readonly type: "failure";
      readonly deviceId: string;
      readonly baseVersion: number;
      readonly code: string;
      readonly reason: string;
      readonly now: number;
    }
  /** The driver aggregated the flushed entries and published `newVersion`. */
  | { readonly type: "flushed"; readonly newVersion: number; readonly now: number }
  /** The job was stopped. */
  | { readonly type: "paused"; readonly now: number }
  /** The job runs again. */
  | { readonly type: "resumed"; readonly now: number };

export type AsyncDecision =
  /** Pick `count` devices (not in flight) and order them to train from the current version; report `ordered`. */
  | { readonly type: "order"; readonly count: number }
  /** Aggregate these buffered updates into the next version; report `flushed`. */
  | { readonly type: "flush"; readonly entries: readonly BufferEntry[] }
  /** This update is refused (not aggregated): E_ASYNC_STALE for τ > maxStaleness, E_PROTO_STALE if unexpected. */
  | {
      readonly type: "refuse";
      readonly deviceId: string;
      readonly updateId: string;
      readonly code: string;
      readonly reason: string;
    }
  /** These devices' orders passed their deadline (their late updates may still count). */
  | { readonly type: "timedOut"; readonly devices: readonly string[] };

export interface AsyncStepResult {
  readonly state: AsyncState;
  readonly decisions: readonly AsyncDecision[];
}

export interface OpenAsync {
  readonly jobId: string;
  readonly concurrency: number;
  readonly buffer: number;
  readonly maxStaleness: number;
  /** Default poly:0.5 (FedBuff's 1/√(1+τ)). */
  readonly staleness?: string;
  /** The version the job starts from (0: the initial model). */
  readonly version?: number;
}

const ZERO: AsyncCounters = {
  ordered: 0,
  applied: 0,
  refusedStale: 0,
  timeouts: 0,
  failures: 0,
  late: 0,
  unexpected: 0,
};

/**
 * Checks the options of an asynchronous job: C ≥ 1, K ≥ 1, maxStaleness ≥ 0 integers and a staleness spec
 * (E_ASYNC_CONFIG, or E_CONFIG_STALENESS for the spec), one line for the first problem.
 */
export function validateAsyncOptions(o: Omit<OpenAsync, "jobId" | "version">): void {
  const int = (name: string, x: unknown, min: number) => {
    if (typeof x !== "number" || !Number.isSafeInteger(x) || x < min)
      fail("E_ASYNC_CONFIG", `asynchronous ${name} must be an integer ≥ ${min}, got ${String(x)}`);
  };
  int("concurrency", o.concurrency, 1);
  int("buffer", o.buffer, 1);
  int("max staleness", o.maxStaleness, 0);
  if (o.staleness !== undefined) parseStaleness(o.staleness);
}

/** A new asynchronous job's state: running, nothing in flight. The options are checked here. */
export function openAsync(o: OpenAsync): AsyncState {
  validateAsyncOptions(o);
  const staleness = o.staleness ?? DEFAULT_STALENESS_SPEC;
  return {
    mode: "async",
    jobId: o.jobId,
    version: o.version ?? 0,
    concurrency: o.concurrency,
    buffer: o.buffer,
    maxStaleness: o.maxStaleness,
    staleness,
    status: "running",
    inFlight: {},
    expired: {},
    entries: [],
    counters: ZERO,
  };
}

const same = (state: AsyncState): AsyncStepResult => ({ state, decisions: [] });
const count = (st: AsyncState, k: keyof AsyncCounters, n = 1): AsyncCounters => ({
  ...st.counters,
  [k]: st.counters[k] + n,
});
function without<T>(r: Readonly<Record<string, T>>, key: string): Record<string, T> {
  const { [key]: _drop, ...rest } = r;
  return rest;
}

/** The engine: one event in, the new state and the decisions out. Pure. */
export function stepAsync(st: AsyncState, ev: AsyncEvent): AsyncStepResult {
  switch (ev.type) {
    case "tick":
      return tick(st, ev.now);
    case "ordered": {
      const inFlight = { ...st.inFlight };
      let expired: Readonly<Record<string, number>> = st.expired;
      let n = 0;
      for (const d of ev.devices) {
        if (inFlight[d]) continue;
        inFlight[d] = { baseVersion: ev.baseVersion, orderedAt: ev.now, deadline: ev.deadline };
        // A new order replaces an expired one: its late update would now be ambiguous.
        if (expired[d] !== undefined) expired = without(expired, d);
        n++;
      }
      if (n === 0) return same(st);
      return settle({ ...st, inFlight, expired, counters: count(st, "ordered", n) }, []);
    }
    case "updateReceived":
      return received(st, ev.deviceId, ev.baseVersion, ev.update);
    case "failure": {
      const f = st.inFlight[ev.deviceId];
      if (f && f.baseVersion === ev.baseVersion) {
        return settle(
          { ...st, inFlight: without(st.inFlight, ev.deviceId), counters: count(st, "failures") },
          [],
        );
      }
      if (st.expired[ev.deviceId] === ev.baseVersion) {
        // The failure of an order that had already timed out: counted once, as the timeout.
        return same({ ...st, expired: without(st.expired, ev.deviceId) });
      }
      return same(st);
    }
    case "flushed": {
      if (st.status !== "flushing" || !(ev.newVersion > st.version)) return same(st);
      const done = new Set(flushable(st).map((e) => e.updateId));
      const flushed = done.size;
      const version = ev.newVersion;
      // Late updates of expired orders older than maxStaleness would be refused: stop waiting for them.
      const oldest = version - st.maxStaleness;
      const expired: Record<string, number> = {};
      for (const [d, b] of Object.entries(st.expired)) if (b >= oldest) expired[d] = b;
      return settle(
        {
          ...st,
          version,
          status: "running",
          entries: st.entries.filter((e) => !done.has(e.updateId)),
          expired,
          counters: count(st, "applied", flushed),
        },
        [],
      );
    }
    case "paused":
      // A flush in progress still completes (its `flushed` is taken while paused).
      return st.paused ? same(st) : same({ ...st, paused: { at: ev.now } });
    case "resumed": {
      if (!st.paused) return same(st);
      const shift = Math.max(0, ev.now - st.paused.at);
      const inFlight: Record<string, InFlight> = {};
      for (const [d, f] of Object.entries(st.inFlight)) inFlight[d] = { ...f, deadline: f.deadline + shift };
      const { paused: _p, ...rest } = st;
      return tick({ ...rest, inFlight }, ev.now);
    }
  }
}

/** Time passed: orders past their deadline time out (their devices may still deliver late). */
function tick(st: AsyncState, now: number): AsyncStepResult {
  if (st.paused) return same(st);
  const gone = Object.entries(st.inFlight)
    .filter(([, f]) => now >= f.deadline)
    .map(([d]) => d);
  if (gone.length === 0) return settle(st, []);
  const inFlight = { ...st.inFlight };
  const expired = { ...st.expired };
  for (const d of gone) {
    expired[d] = inFlight[d]!.baseVersion;
    delete inFlight[d];
  }
  return settle({ ...st, inFlight, expired, counters: count(st, "timeouts", gone.length) }, [
    { type: "timedOut", devices: gone.sort() },
  ]);
}

function received(st: AsyncState, deviceId: string, baseVersion: number, u: AsyncUpdate): AsyncStepResult {
  if (st.entries.some((e) => e.updateId === u.updateId)) return same(st); // a duplicate delivery
  const f = st.inFlight[deviceId];
  const onTime = f !== undefined && f.baseVersion === baseVersion;
  const late = !onTime && st.expired[deviceId] === baseVersion;
  if (!onTime && !late) {
    return {
      state: { ...st, counters: count(st, "unexpected") },
      decisions: [
        {
          type: "refuse",
          deviceId,
          updateId: u.updateId,
          code: "E_PROTO_STALE",
          reason: `update from '${deviceId}' for job ${st.jobId} version ${baseVersion} was not ordered (or is a duplicate)`,
        },
      ],
    };
  }
  let next: AsyncState = onTime
    ? { ...st, inFlight: without(st.inFlight, deviceId) }
    : { ...st, expired: without(st.expired, deviceId), counters: count(st, "late") };
  const tau = st.version - baseVersion;
  if (tau > st.maxStaleness) {
    next = { ...next, counters: { ...next.counters, refusedStale: next.counters.refusedStale + 1 } };
    return settle(next, [
      {
        type: "refuse",
        deviceId,
        updateId: u.updateId,
        code: "E_ASYNC_STALE",
        reason:
          `update from '${deviceId}' trained from version ${baseVersion} arrived at version ${st.version}: ` +
          `staleness ${tau} > max staleness ${st.maxStaleness}`,
      },
    ]);
  }
  const entry: BufferEntry = {
    deviceId,
    updateId: u.updateId,
    baseVersion,
    staleness: tau,
    weight: stalenessWeight(parseStaleness(st.staleness), tau),
    numSamples: u.numSamples,
    at: u.at,
  };
  return settle({ ...next, entries: [...st.entries, entry] }, []);
}

/**
 * The decisions the state calls for after an event: a flush when a running job's buffer holds K, else an order
 * when fewer than C devices are in flight (none while flushing or paused).
 */
function settle(st: AsyncState, decisions: AsyncDecision[]): AsyncStepResult {
  if (st.status !== "running" || st.paused) return { state: st, decisions };
  const batch = flushable(st);
  if (batch.length >= st.buffer) {
    return {
      state: { ...st, status: "flushing" },
      decisions: [...decisions, { type: "flush", entries: batch }],
    };
  }
  const free = st.concurrency - Object.keys(st.inFlight).length;
  return { state: st, decisions: free > 0 ? [...decisions, { type: "order", count: free }] : decisions };
}

/**
 * The entries the next flush applies: the first K of the buffer, in arrival order. The drivers order no device
 * whose update waits in the buffer, so a flush holds one update per device (as the aggregation requires; a second
 * one would be refused E_STRATEGY_DUPLICATE and counted).
 */
export function flushable(st: Pick<AsyncState, "entries" | "buffer">): BufferEntry[] {
  return st.entries.slice(0, st.buffer);
}

/** The oldest base version a job at `version` still accepts (updates from before it are refused). */
export function oldestAccepted(st: Pick<AsyncState, "version" | "maxStaleness">): number {
  return Math.max(0, st.version - st.maxStaleness);
}

/** The entries a flush decision carries, as the driver sees them: Σ n_k, and the staleness list. */
export function flushSummary(entries: readonly BufferEntry[]): { samples: number; staleness: number[] } {
  return {
    samples: entries.reduce((s, e) => s + e.numSamples, 0),
    staleness: entries.map((e) => e.staleness),
  };
}
