/**
 * FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data"):
 * each round a uniform sample of the available devices trains locally, and the new global model is
 * `global + Σ n_k Δ_k / Σ n_k`, the sample-weighted mean of their deltas. In asynchronous rounds (FedBuff,
 * Nguyen et al. AISTATS 2022) an update may carry a staleness weight s_k ≤ 1 (`FitResult.discount`): the mean is
 * then Σ n_k s_k Δ_k / Σ n_k, so stale updates move the model less instead of being renormalised to full size.
 *
 * This class is also the base of every other strategy here (as in Flower, where FedProx, FedAvgM and FedOpt
 * derive from FedAvg): subclasses override exactly one hook,
 *   - `fitConfig(round, deviceId)`  what a device is told to do (FedProx adds μ), or
 *   - `createOptimizer()`           the server step applied to the mean delta (FedAvgM, FedAdam, ...).
 *
 * Aggregation streams: each update is validated and folded into one Accumulator, never retained.
 */
import { Rng } from "../data/rng";
import { decodeTensorInto } from "../compress";
import { fail, isFlotillaError } from "../errors";
import { Accumulator } from "../tensor/accumulator";
import {
  checkRound,
  deviceSeed,
  roundSeed,
  validateOptions,
  type RoundSummary,
  type ServerOptimizer,
} from "./base";
import type {
  ClientInfo,
  FitConfig,
  FitFailure,
  FitInstruction,
  FitResult,
  RoundAggregation,
  RoundResult,
  SecureAggregate,
  Strategy,
  StrategyOptions,
  StrategyState,
} from "./strategy";
import { RoundMetricsSum } from "./metrics";

/** FedAvg's server step: the new model is the old one plus the mean delta. Stateless. */
export class AveragingStep implements ServerOptimizer {
  reset(): void {}
  step(global: Float32Array, meanDelta: Float32Array, next: Float32Array): void {
    for (let i = 0; i < next.length; i++) next[i] = global[i] + meanDelta[i];
  }
  tensors(): Readonly<Record<string, Float64Array>> {
    return {};
  }
}

interface OpenRound {
  readonly round: number;
  readonly seen: Set<string>;
  readonly rejected: FitFailure[];
  readonly metrics: RoundMetricsSum;
  accepted: number;
  totalSamples: number;
}

/** A round's streaming aggregation; stops working once finished or once a newer round begins. */
export interface StreamingAggregation extends RoundAggregation {
  readonly round: number;
  /** Updates refused so far this round (each one also threw from `add`). */
  readonly rejected: readonly FitFailure[];
}

export class FedAvg implements Strategy {
  readonly name: string = "fedavg";
  protected readonly options: StrategyOptions;
  /** Rounds that ended with the global model unchanged (no usable update). */
  readonly failedRounds: number[] = [];
  private last: RoundSummary | undefined;

  private readonly optimizer: ServerOptimizer;
  private global: Float32Array | null = null;
  private acc: Accumulator | null = null;
  private meanDelta = new Float32Array(0);
  private open: OpenRound | null = null;
  /** Server steps applied since the optimizer state was last (re)started (part of the exported state). */
  private steps = 0;

  constructor(options: StrategyOptions) {
    validateOptions(options);
    this.options = options;
    // Called from the constructor: implementations must only read `options`, not subclass fields.
    this.optimizer = this.createOptimizer(options);
  }

  /** The server step; FedAvg's is `global + meanDelta`. */
  protected createOptimizer(_options: StrategyOptions): ServerOptimizer {
    return new AveragingStep();
  }

  /**
   * The training config sent to `deviceId` for `round`: epochs, batch size, lr and the on-device optimizer (when
   * set), plus a per-device seed.
   * `fit.mu` is not forwarded: a device given μ trains FedProx's proximal objective, which is FedProx's override.
   */
  protected fitConfig(round: number, deviceId: string): FitConfig {
    const { epochs, batchSize, lr, optimizer } = this.options.fit;
    return {
      epochs,
      batchSize,
      lr,
      seed: deviceSeed(this.options.seed, round, deviceId),
      ...(optimizer !== undefined ? { optimizer } : {}),
    };
  }

  /** Summary of the most recently finished round. */
  get lastRound(): RoundSummary | undefined {
    return this.last;
  }

  get weights(): Float32Array {
    if (this.global === null) return fail("E_STRATEGY_STATE", `${this.name}: initialize() was not called`);
    return this.global;
  }

  initialize(weights: Float32Array): void {
    if (!(weights instanceof Float32Array) || weights.length === 0) {
      fail("E_STRATEGY_SIZE", `${this.name}: initial weights must be a non-empty Float32Array`);
    }
    if (!allFinite(weights)) {
      fail("E_STRATEGY_NONFINITE", `${this.name}: initial weights contain NaN or Infinity`);
    }
    const n = weights.length;
    if (this.acc === null || this.acc.size !== n) {
      this.acc?.dispose();
      this.acc = new Accumulator(n);
      this.meanDelta = new Float32Array(n);
    } else {
      this.acc.reset();
    }
    this.global = weights.slice();
    this.open = null;
    this.optimizer.reset(n);
    this.steps = 0;
  }

  exportState(): StrategyState {
    const size = this.weights.length;
    const tensors: Record<string, Float64Array> = {};
    for (const [name, t] of Object.entries(this.optimizer.tensors())) tensors[name] = t.slice();
    return { strategy: this.name, size, steps: this.steps, tensors };
  }

  importState(state: StrategyState): void {
    const size = this.weights.length;
    const bad = (why: string): never =>
      fail("E_STRATEGY_STATE", `${this.name}: cannot import strategy state: ${why}`);
    if (typeof state !== "object" || state === null) return bad("not an object");
    if (state.strategy !== this.name) return bad(`it belongs to '${String(state.strategy)}'`);
    if (state.size !== size) return bad(`it is for a model of ${state.size} values, this one has ${size}`);
    if (!Number.isSafeInteger(state.steps) || state.steps < 0) return bad(`steps is ${state.steps}`);
    const live = this.optimizer.tensors();
    const want = Object.keys(live).sort();
    const got = Object.keys(state.tensors ?? {}).sort();
    if (want.join() !== got.join()) return bad(`tensors [${got.join(", ")}], expected [${want.join(", ")}]`);
    for (const name of want) {
      const t = state.tensors[name];
      if (!(t instanceof Float64Array) || t.length !== size)
        return bad(`tensor '${name}' is not ${size} float64`);
      for (let i = 0; i < t.length; i++) {
        if (!Number.isFinite(t[i])) return bad(`tensor '${name}' has NaN or Infinity at index ${i}`);
      }
    }
    if (this.open !== null) return bad("a round's aggregation is open");
    for (const name of want) live[name].set(state.tensors[name]);
    this.steps = state.steps;
  }

  /**
   * Samples min(clientsPerRound, distinct available) devices uniformly without replacement. The draw depends only
   * on (options.seed, round) and the *set* of available device ids (they are put in a canonical order first), so
   * replaying a round, or listing the same devices in another order, picks the same devices.
   */
  configureFit(round: number, available: readonly ClientInfo[]): FitInstruction[] {
    checkRound(round);
    const ids = [...new Set(available.map((c) => c.deviceId))].sort();
    const rng = new Rng(roundSeed(this.options.seed, round));
    const picks = rng.sample(ids.length, Math.min(this.options.clientsPerRound, ids.length));
    return picks.map((i) => ({ deviceId: ids[i], config: this.fitConfig(round, ids[i]) }));
  }

  /** Starts a round; a round that was begun but not finished is abandoned (its aggregation stops working). */
  beginAggregate(round: number): StreamingAggregation {
    checkRound(round);
    const acc = this.requireAccumulator();
    acc.reset();
    const state: OpenRound = {
      round,
      seen: new Set(),
      rejected: [],
      metrics: new RoundMetricsSum(),
      accepted: 0,
      totalSamples: 0,
    };
    this.open = state;
    return {
      round,
      get count() {
        return state.accepted;
      },
      get rejected() {
        return state.rejected;
      },
      add: (result) => this.addUpdate(state, result),
      addAggregate: (aggregate) => this.addSecureAggregate(state, aggregate),
      finish: (failures) => this.finishRound(state, failures),
    };
  }

  /** Releases the accumulator (which may hold wasm memory). The strategy must be initialized again to be used. */
  dispose(): void {
    this.acc?.dispose();
    this.acc = null;
    this.global = null;
    this.open = null;
  }

  private requireAccumulator(): Accumulator {
    if (this.acc === null || this.global === null) {
      return fail("E_STRATEGY_STATE", `${this.name}: initialize() was not called`);
    }
    return this.acc;
  }

  private requireOpen(state: OpenRound): Accumulator {
    if (this.open !== state) {
      fail(
        "E_STRATEGY_STATE",
        `${this.name}: round ${state.round} aggregation is closed (finished or superseded)`,
      );
    }
    return this.requireAccumulator();
  }

  private addUpdate(state: OpenRound, r: FitResult): void {
    const acc = this.requireOpen(state);
    try {
      if (state.seen.has(r.deviceId)) {
        fail("E_STRATEGY_DUPLICATE", `round ${state.round}: a second update from '${r.deviceId}'`);
      }
      const d = r.delta;
      const n = checkSamples(r);
      // FedBuff's staleness weight: n·s(τ) in the sum, n in the denominator (never normalised away).
      const s = checkDiscount(r);
      if (d instanceof Float32Array) {
        if (d.length !== acc.size) {
          fail(
            "E_STRATEGY_SIZE",
            `update from '${r.deviceId}' has ${d.length} values, expected ${acc.size} values`,
          );
        }
        checkFinite(r.deviceId, d);
        acc.add(d, n * s, n);
      } else if (d && typeof d === "object" && d.encoding === "flz" && d.bytes instanceof Uint8Array) {
        // Decode inside the streaming loop, straight into the accumulator's input view: no float32 copy of
        // the update is ever made. A bad envelope throws E_ENVELOPE_* before anything is summed.
        const view = acc.acquireInput();
        try {
          decodeTensorInto(d.bytes, view, { length: acc.size });
        } catch (e) {
          if (isFlotillaError(e) && e.code === "E_ENVELOPE_LAYOUT") {
            fail("E_STRATEGY_SIZE", `update from '${r.deviceId}': ${e.message}`, { cause: e });
          }
          throw e;
        }
        checkFinite(r.deviceId, view);
        acc.addAcquired(n * s, n);
      } else {
        fail("E_STRATEGY_SIZE", `update from '${r.deviceId}' is neither a Float32Array nor an envelope`);
      }
    } catch (e) {
      if (isFlotillaError(e)) state.rejected.push({ deviceId: r.deviceId, code: e.code, reason: e.message });
      throw e;
    }
    state.seen.add(r.deviceId);
    state.accepted++;
    state.totalSamples += r.numSamples;
    state.metrics.addUpdate(r.numSamples, r.metrics);
  }

  private addSecureAggregate(state: OpenRound, a: SecureAggregate): void {
    const acc = this.requireOpen(state);
    try {
      const dup = a.deviceIds.find((id) => state.seen.has(id));
      if (dup !== undefined)
        fail("E_STRATEGY_DUPLICATE", `round ${state.round}: a second update from '${dup}'`);
      if (a.deviceIds.length === 0 || !(a.totalSamples > 0 && a.totalSamples <= Number.MAX_SAFE_INTEGER)) {
        fail(
          "E_STRATEGY_SAMPLES",
          `secure aggregate of ${a.deviceIds.length} devices has ${a.totalSamples} samples`,
        );
      }
      if (!(a.mean instanceof Float32Array) || a.mean.length !== acc.size) {
        fail("E_STRATEGY_SIZE", `secure aggregate has ${a.mean?.length} values, expected ${acc.size} values`);
      }
      checkFinite("secure aggregate", a.mean);
      acc.add(a.mean, a.totalSamples);
    } catch (e) {
      if (isFlotillaError(e)) {
        for (const id of a.deviceIds) state.rejected.push({ deviceId: id, code: e.code, reason: e.message });
      }
      throw e;
    }
    for (const id of a.deviceIds) state.seen.add(id);
    state.accepted += a.deviceIds.length;
    state.totalSamples += a.totalSamples;
    state.metrics.addAggregate(a);
  }

  private finishRound(state: OpenRound, failures: readonly FitFailure[]): RoundResult {
    return { weights: this.nextModel(state, failures), metrics: state.metrics.result() };
  }

  private nextModel(state: OpenRound, failures: readonly FitFailure[]): Float32Array {
    const acc = this.requireOpen(state);
    this.open = null;
    const global = this.weights;
    const base = { round: state.round, accepted: state.accepted, totalSamples: state.totalSamples };
    const record = { rejected: state.rejected.slice(), failures: failures.slice() };
    if (acc.count === 0) {
      return this.failRound({ ...base, ...record, status: "failed", reason: "no update was aggregated" });
    }
    acc.mean(this.meanDelta);
    const next = new Float32Array(global.length);
    this.optimizer.step(global, this.meanDelta, next);
    if (!allFinite(next)) {
      // Float32 overflow (e.g. a huge delta): keep the model, restart the optimizer state it may have absorbed.
      this.optimizer.reset(global.length);
      this.steps = 0;
      const reason = "the server step overflowed to NaN or Infinity; model kept, optimizer state reset";
      return this.failRound({ ...base, ...record, status: "failed", reason });
    }
    this.global = next;
    this.steps++;
    this.last = { ...base, ...record, status: "aggregated" };
    return next;
  }

  private failRound(summary: RoundSummary): Float32Array {
    this.last = summary;
    this.failedRounds.push(summary.round);
    return this.weights;
  }
}

/**
 * True when every value is finite. Summing Float32 values in a double cannot overflow (|x| < 3.5e38, so even
 * 1e9 values stay far below 1.8e308), while one NaN or ±Infinity makes the sum non-finite: one cheap pass.
 */
export function allFinite(x: Float32Array): boolean {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  return Number.isFinite(s);
}

/** An update's sample count: a number in (0, 2^53) (E_STRATEGY_SAMPLES). */
export function checkSamples(r: Pick<FitResult, "deviceId" | "numSamples">): number {
  const n = r.numSamples;
  if (typeof n !== "number" || !(n > 0 && n <= Number.MAX_SAFE_INTEGER)) {
    fail("E_STRATEGY_SAMPLES", `update from '${r.deviceId}' reports ${n} samples (expected a number > 0)`);
  }
  return n;
}

/** An update's staleness discount s(τ): 1 when absent, else a number in (0, 1] (E_STRATEGY_WEIGHT). */
export function checkDiscount(r: Pick<FitResult, "deviceId" | "discount">): number {
  const s = r.discount;
  if (s === undefined) return 1;
  if (typeof s !== "number" || !(s > 0 && s <= 1))
    fail(
      "E_STRATEGY_WEIGHT",
      `update from '${r.deviceId}' has staleness weight ${s} (expected a number in (0, 1])`,
    );
  return s;
}

function checkFinite(deviceId: string, d: Float32Array): void {
  if (!allFinite(d)) {
    fail(
      "E_STRATEGY_NONFINITE",
      `update from '${deviceId}' has NaN or Infinity at index ${firstNonFinite(d)}`,
    );
  }
}

function firstNonFinite(x: Float32Array): number {
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i])) return i;
  return -1;
}
