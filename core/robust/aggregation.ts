/**
 * A round's robust aggregation: a RoundAggregation decorator over the strategy's own (core/round/aggregation.ts
 * builds the chain), so every server strategy composes with every rule — the rule replaces FedAvg's weighted mean,
 * and the strategy's server step (FedAvgM's momentum, FedAdam's moments, …) steps on the rule's output.
 *
 * Memory: every rule but the (fixed-bound) mean needs all of a round's updates at once, so `add` decodes each update
 * into its own Float32Array and keeps it until `finish`: n × d × 4 bytes (100 devices × 1M parameters = 400 MB)
 * beside the model. The mean with no bound or a fixed bound streams instead: each update is clipped as it arrives
 * and passed straight to the strategy, nothing is kept.
 *
 * At `finish` the buffered updates are (1) scaled by their staleness weight s_k (FedBuff; 1 in synchronous rounds),
 * (2) norm-bounded when the spec says so, (3) aggregated by the rule; the result goes into the strategy's
 * aggregation as one aggregate of the kept devices weighing Σ n_k, so its mean *is* the rule's output. Beside the
 * next model, the round result carries a RobustReport: per device its norm, cosine to the aggregate, whether it was
 * clipped and whether the rule kept it — the quality record's input (core/robust/quality.ts).
 */
import { decodeTensorInto } from "../compress";
import { fail, isFlotillaError } from "../errors";
import { allFinite, checkDiscount, checkSamples } from "../strategies/fedavg";
import type {
  FitFailure,
  FitResult,
  RoundAggregation,
  RoundResult,
  SecureAggregate,
  UpdateReport,
} from "../strategies/strategy";
import {
  boundNorms,
  centeredClip,
  coordinateMedian,
  flTrust,
  geometricMedian,
  l2Norm,
  multiKrum,
  scaled,
  trimmedMean,
  weightedMean,
  type RobustInput,
  type RobustOutput,
} from "./rules";
import { formatAggregator, isStreaming, resolveCount, type AggregatorSpec } from "./spec";

/** The failure code of a device whose update a robust rule left out of the aggregate. */
export const E_ROBUST_DROPPED = "E_ROBUST_DROPPED";

/** What a robust round needs besides its updates. */
export interface RobustContext {
  readonly spec: AggregatorSpec;
  readonly round: number;
  /** Model length: every update must have it. */
  readonly length: number;
  /** FLTrust: the server's own update this round, trained on its root dataset from the current global model. */
  readonly rootDelta?: Float32Array;
  /** Centered clipping: the reference to clip around (the previous round's aggregate); unset: zero. */
  readonly reference?: Float32Array;
  /**
   * Secure rounds of a `norm:C+mean` job: the round order told each device to clip its update to C before masking
   * (core/round/update-pipeline.ts boundDelta), so the secure sum is accepted as bounded. Without it a bounded
   * spec refuses a secure sum.
   */
  readonly boundOnDevices?: boolean;
}

/** One device's update as the robust aggregation saw it. */
export interface RobustDeviceStats {
  readonly deviceId: string;
  /** L2 norm of the update (after its staleness weight, before any bound). */
  readonly norm: number;
  /** Cosine similarity of the update to the round's aggregate (0 when either is zero). */
  readonly cosine: number;
  /** True when norm bounding scaled it down. */
  readonly clipped: boolean;
  /** False when the rule left it out of the aggregate (Krum, FLTrust). */
  readonly kept: boolean;
  /** Why it was left out. */
  readonly reason?: string;
  /** FLTrust trust score (ReLU of the cosine to the root update). */
  readonly trust?: number;
}

/** What the robust aggregation did in a round (in the round record as `robust`). */
export interface RobustReport {
  /** The canonical spec (formatAggregator). */
  readonly aggregator: string;
  /** The norm bound this round used, when there is one (a quantile bound resolves to a number each round). */
  readonly bound?: number;
  /** Updates the rule received. */
  readonly updates: number;
  readonly kept: readonly string[];
  readonly dropped: readonly FitFailure[];
  /** L2 norm of the aggregate delta. */
  readonly aggregateNorm: number;
  /** Per-device statistics, in arrival order (empty for the streaming mean, which keeps no update). */
  readonly devices: readonly RobustDeviceStats[];
  /** Time the rule took, ms. */
  readonly ms: number;
  /**
   * Secure aggregation with `norm:C+mean`: the bound was applied by each device before masking (the round order
   * carried it, core/round/update-pipeline.ts boundDelta); the server saw only the sum and could not check it.
   */
  readonly onDevices?: true;
}

/** A round result with the robust aggregation's report. */
export interface RobustRoundResult extends RoundResult {
  readonly robust?: RobustReport;
}

interface Buffered {
  readonly deviceId: string;
  readonly delta: Float32Array;
  readonly numSamples: number;
  readonly report: UpdateReport;
}

/**
 * Wraps `inner` (the strategy's aggregation, possibly DP-wrapped) with the spec's rule. FLTrust without the
 * server's root update (or with one of another length) is refused here, when the round begins, before any device
 * trains for it.
 */
export function robustAggregation(inner: RoundAggregation, ctx: RobustContext): RoundAggregation {
  if (ctx.spec.rule === "fltrust") {
    if (!ctx.rootDelta)
      fail(
        "E_CONFIG_AGGREGATOR",
        `aggregator '${formatAggregator(ctx.spec)}' needs the server's root update, and the job has no root dataset`,
      );
    if (ctx.rootDelta.length !== ctx.length)
      fail(
        "E_STRATEGY_SIZE",
        `fltrust: the root update has ${ctx.rootDelta.length} values, expected ${ctx.length}`,
      );
  }
  return isStreaming(ctx.spec) ? new StreamingBound(inner, ctx) : new BufferedRobust(inner, ctx);
}

/**
 * An update's values as a Float32Array of `length`: the array itself, or the envelope decoded (into `into` when
 * given, else a new array). One home for the robust rules, the quality observer and the simulator's attacks. A wrong
 * size or layout is E_STRATEGY_SIZE, as FedAvg's own check; a corrupt envelope throws its E_ENVELOPE_* error.
 */
export function updateValues(r: FitResult, length: number, into?: Float32Array): Float32Array {
  const d = r.delta;
  if (d instanceof Float32Array) {
    if (d.length !== length)
      fail(
        "E_STRATEGY_SIZE",
        `update from '${r.deviceId}' has ${d.length} values, expected ${length} values`,
      );
    return d;
  }
  if (d && typeof d === "object" && d.encoding === "flz" && d.bytes instanceof Uint8Array) {
    const out = into ?? new Float32Array(length);
    try {
      decodeTensorInto(d.bytes, out, { length });
    } catch (e) {
      if (isFlotillaError(e) && e.code === "E_ENVELOPE_LAYOUT")
        fail("E_STRATEGY_SIZE", `update from '${r.deviceId}': ${e.message}`, { cause: e });
      throw e;
    }
    return out;
  }
  return fail("E_STRATEGY_SIZE", `update from '${r.deviceId}' is neither a Float32Array nor an envelope`);
}

/**
 * Validates one update and returns its decoded, staleness-scaled delta: a copy whenever it is scaled or decoded,
 * and always when `own` (a buffered round keeps it past `add`, while the caller may reuse its array as soon as
 * `add` returns: RoundAggregation streams).
 */
function admit(r: FitResult, length: number, seen: Set<string>, round: number, own = false): Float32Array {
  if (seen.has(r.deviceId))
    fail("E_STRATEGY_DUPLICATE", `round ${round}: a second update from '${r.deviceId}'`);
  checkSamples(r);
  const s = checkDiscount(r);
  let delta = updateValues(r, length);
  if (!allFinite(delta)) {
    let i = 0;
    while (Number.isFinite(delta[i])) i++;
    fail("E_STRATEGY_NONFINITE", `update from '${r.deviceId}' has NaN or Infinity at index ${i}`);
  }
  if (s !== 1) delta = scaled(delta, s);
  else if (own && delta === r.delta) delta = delta.slice();
  return delta;
}

function secureRefused(ctx: RobustContext): never {
  return fail(
    "E_CONFIG_CONFLICT",
    `aggregator '${formatAggregator(ctx.spec)}' cannot aggregate a secure sum: it needs each device's update`,
  );
}

/** The mean with a fixed norm bound: each update clipped on arrival and streamed into the strategy. */
class StreamingBound implements RoundAggregation {
  private readonly seen = new Set<string>();
  private clipped = 0;
  /** The round came as a secure sum (bounded on the devices). */
  private onDevices = false;
  constructor(
    private readonly inner: RoundAggregation,
    private readonly ctx: RobustContext,
  ) {}
  get count(): number {
    return this.inner.count;
  }
  add(r: FitResult): void {
    const bound = this.ctx.spec.bound;
    if (bound === undefined || !("fixed" in bound)) return this.inner.add(r);
    let delta = admit(r, this.ctx.length, this.seen, this.ctx.round);
    const norm = l2Norm(delta);
    if (norm > bound.fixed) {
      const k = bound.fixed / norm;
      delta = scaled(delta, k);
      this.clipped++;
    }
    // The staleness weight is already in `delta`.
    const { discount: _d, ...rest } = r;
    this.inner.add({ ...rest, delta });
    this.seen.add(r.deviceId);
  }
  addAggregate(a: SecureAggregate): void {
    // A secure sum: only a fixed bound applied by the devices before masking (the round order said so:
    // core/round/update-pipeline.ts boundDelta); the server cannot check it (docs/robustness.md).
    if (this.ctx.spec.bound !== undefined && !this.ctx.boundOnDevices) secureRefused(this.ctx);
    this.inner.addAggregate(a);
    for (const id of a.deviceIds) this.seen.add(id);
    this.onDevices = true;
  }
  finish(failures: readonly FitFailure[]): RobustRoundResult {
    const out = this.inner.finish(failures);
    const bound = this.ctx.spec.bound;
    return {
      ...out,
      robust: {
        aggregator: formatAggregator(this.ctx.spec),
        ...(bound && "fixed" in bound ? { bound: bound.fixed } : {}),
        updates: this.seen.size,
        kept: [...this.seen],
        dropped: [],
        aggregateNorm: NaN,
        devices: [],
        ms: 0,
        ...(this.onDevices ? { onDevices: true as const } : {}),
      },
    };
  }
}

/** Every other rule: the round's updates are buffered and aggregated at finish. */
class BufferedRobust implements RoundAggregation {
  private readonly buffer: Buffered[] = [];
  private readonly seen = new Set<string>();
  constructor(
    private readonly inner: RoundAggregation,
    private readonly ctx: RobustContext,
  ) {}
  get count(): number {
    return this.buffer.length;
  }
  add(r: FitResult): void {
    const delta = admit(r, this.ctx.length, this.seen, this.ctx.round, true);
    this.seen.add(r.deviceId);
    this.buffer.push({
      deviceId: r.deviceId,
      delta,
      numSamples: r.numSamples,
      report: { numSamples: r.numSamples, loss: r.metrics?.loss, accuracy: r.metrics?.accuracy },
    });
  }
  addAggregate(_a: SecureAggregate): void {
    secureRefused(this.ctx);
  }
  finish(failures: readonly FitFailure[]): RobustRoundResult {
    const updates = this.buffer.splice(0);
    if (updates.length === 0) return this.inner.finish(failures);
    const t0 = performance.now();
    const spec = this.ctx.spec;
    const norms = updates.map((u) => l2Norm(u.delta));
    let inputs: RobustInput[] = updates.map((u) => ({
      deviceId: u.deviceId,
      delta: u.delta,
      weight: u.numSamples,
    }));
    let bound: number | undefined;
    let clipped = new Set<string>();
    if (spec.bound) {
      const b = boundNorms(inputs, spec.bound, norms);
      inputs = b.inputs;
      bound = b.bound;
      clipped = new Set(b.clipped);
    }
    const { out, trust } = applyRule(spec, inputs, this.ctx);
    const keptSet = new Set(out.kept);
    const why = new Map(out.dropped.map((d) => [d.deviceId, d.reason]));
    const aggNorm = l2Norm(out.delta);
    const devices: RobustDeviceStats[] = updates.map((u, k) => ({
      deviceId: u.deviceId,
      norm: norms[k]!,
      cosine: cosine(u.delta, norms[k]!, out.delta, aggNorm),
      clipped: clipped.has(u.deviceId),
      kept: keptSet.has(u.deviceId),
      ...(why.has(u.deviceId) ? { reason: why.get(u.deviceId)! } : {}),
      ...(trust ? { trust: trust[k]! } : {}),
    }));
    const ms = performance.now() - t0;
    const keptUpdates = updates.filter((u) => keptSet.has(u.deviceId));
    const dropped: FitFailure[] = out.dropped.map((d) => ({
      deviceId: d.deviceId,
      code: E_ROBUST_DROPPED,
      reason: d.reason,
    }));
    if (keptUpdates.length > 0) {
      this.inner.addAggregate({
        deviceIds: keptUpdates.map((u) => u.deviceId),
        totalSamples: keptUpdates.reduce((s, u) => s + u.numSamples, 0),
        mean: out.delta,
        reports: keptUpdates.map((u) => u.report),
      });
    }
    const result = this.inner.finish(failures);
    return {
      ...result,
      robust: {
        aggregator: formatAggregator(spec),
        ...(bound !== undefined ? { bound } : {}),
        updates: updates.length,
        kept: keptUpdates.map((u) => u.deviceId),
        dropped,
        aggregateNorm: aggNorm,
        devices,
        ms,
      },
    };
  }
}

function cosine(a: Float32Array, na: number, b: Float32Array, nb: number): number {
  if (!(na > 0 && nb > 0)) return 0;
  let dot = 0;
  for (let i = 0; i < a.length; i++) dot += a[i]! * b[i]!;
  return dot / (na * nb);
}

/** Runs the spec's rule over the (bounded) inputs. */
function applyRule(
  spec: AggregatorSpec,
  inputs: readonly RobustInput[],
  ctx: RobustContext,
): { out: RobustOutput; trust?: readonly number[] } {
  const n = inputs.length;
  switch (spec.rule) {
    case "mean":
      return { out: weightedMean(inputs) };
    case "median":
      return { out: coordinateMedian(inputs) };
    case "trimmed-mean": {
      // Never trim everything: with few updates a fraction trims as much as n allows.
      const b = Math.min(resolveCount(spec.trim, n), Math.floor((n - 1) / 2));
      return { out: trimmedMean(inputs, b) };
    }
    case "krum":
    case "multi-krum": {
      // Krum needs n > 2f + 2: with fewer updates f shrinks to what n allows (the record shows n and who was kept).
      const f = Math.max(0, Math.min(resolveCount(spec.f, n), Math.floor((n - 3) / 2)));
      if (n < 3) return { out: weightedMean(inputs) };
      const m = spec.rule === "krum" ? 1 : Math.max(1, Math.min(n, resolveCount(spec.m, n)));
      return { out: multiKrum(inputs, f, m) };
    }
    case "geomed":
      return { out: geometricMedian(inputs, { maxIter: 10, tol: 1e-5 }) };
    case "centered-clip":
      return {
        out: centeredClip(inputs, spec.tau, {
          ...(ctx.reference ? { reference: ctx.reference } : {}),
          iterations: ctx.reference ? 1 : 3,
        }),
      };
    case "fltrust": {
      if (!ctx.rootDelta)
        fail("E_CONFIG_AGGREGATOR", "fltrust needs the server's root update (the job has no root dataset)");
      const r = flTrust(inputs, ctx.rootDelta);
      return { out: r, trust: r.scores };
    }
  }
}
