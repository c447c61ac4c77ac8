/**
 * One home for a round's aggregation chain, used by the simulator's sync and async drivers and by the Function's
 * sync and async rounds alike:
 *
 *   [interceptor (simulator attacks)] → [quality observer] → [robust rule + norm bound (core/robust)]
 *     → [differential privacy] → strategy
 *
 * The strategy's aggregation is the innermost (its server step turns whatever mean reaches it into the next model);
 * DP wraps it when the job has DP; a robust spec other than the plain mean wraps that (DP and robust rules never
 * combine: core/robust/spec.ts checkAggregatorCompatible refuses it when the job is configured); the simulator may
 * put an interceptor outermost to play the round's attackers (local/sim/attacks). With `observe`, a light observer
 * (contribution quality, core/robust/quality.ts) sees each update as the aggregation receives it and records its
 * norm, its cosine to the previous round's global step and its reported loss, without buffering anything (one
 * scratch buffer for a compressed update); the result carries them as `observed`.
 */
import { decodeTensorInto } from "../compress";
import type { DifferentialPrivacy } from "../privacy/dp";
import { robustAggregation } from "../robust/aggregation";
import type { DeviceObservation } from "../robust/quality";
import { l2Norm } from "../robust/rules";
import { isPlainMean, type AggregatorSpec } from "../robust/spec";
import type {
  FitFailure,
  FitResult,
  RoundAggregation,
  RoundResult,
  SecureAggregate,
  Strategy,
} from "../strategies/strategy";

/** What an interceptor may know of the round it wraps. */
export interface InterceptContext {
  /** Round (sync) or the version being made (async). */
  readonly round: number;
  /** The current global model (the one the round's devices trained from). */
  readonly global: Float32Array;
}

/**
 * Sees (and may rewrite) every update before the rest of the chain: the simulator's model-poisoning attacks
 * (local/sim/attacks) are interceptors, since an omniscient attacker needs the honest updates of the round.
 */
export interface RoundInterceptor {
  wrap(aggregation: RoundAggregation, ctx: InterceptContext): RoundAggregation;
}

export interface RoundAggregationOptions {
  readonly dp?: DifferentialPrivacy;
  /** The job's weight layout hash (DP's record). */
  readonly layoutHash: string;
  /** The robust aggregator (unset or plain mean: the strategy's own streaming mean). */
  readonly aggregator?: AggregatorSpec;
  /** FLTrust: the server's update on its root dataset this round. */
  readonly rootDelta?: Float32Array;
  /** Centered clipping: the previous round's aggregate delta. */
  readonly reference?: Float32Array;
  readonly interceptor?: RoundInterceptor;
  /** Contribution quality: record each update's norm, cosine to `reference` and loss (result `observed`). */
  readonly observe?: boolean;
}

/** A round result with the quality observer's per-device observations. */
export interface ObservedRoundResult extends RoundResult {
  readonly observed?: readonly DeviceObservation[];
}

/** Begins round `round`'s aggregation with the job's chain. */
export function beginRoundAggregation(
  strategy: Strategy,
  round: number,
  o: RoundAggregationOptions,
): RoundAggregation {
  const global = strategy.weights;
  let agg: RoundAggregation = strategy.beginAggregate(round);
  if (o.dp)
    agg = o.dp.aggregate(agg, { round, layoutHash: o.layoutHash, length: global.length, current: global });
  if (o.aggregator && !isPlainMean(o.aggregator)) {
    agg = robustAggregation(agg, {
      spec: o.aggregator,
      round,
      length: global.length,
      ...(o.rootDelta ? { rootDelta: o.rootDelta } : {}),
      ...(o.reference ? { reference: o.reference } : {}),
    });
  }
  if (o.observe) agg = new ObservingAggregation(agg, global.length, o.reference);
  if (o.interceptor) agg = o.interceptor.wrap(agg, { round, global });
  return agg;
}

/**
 * The quality observer: passes every update on unchanged and records its norm, its cosine to `reference` (the
 * previous global step; none in the first round) and its reported training loss. Nothing is buffered but one
 * scratch array to decode a compressed update into; an update the rest of the chain refuses is not recorded
 * (its failure is).
 */
class ObservingAggregation implements RoundAggregation {
  private readonly seen: DeviceObservation[] = [];
  private scratch: Float32Array | undefined;
  private readonly refNorm: number;
  constructor(
    private readonly inner: RoundAggregation,
    private readonly length: number,
    private readonly reference?: Float32Array,
  ) {
    this.refNorm = reference ? l2Norm(reference) : 0;
  }
  get count(): number {
    return this.inner.count;
  }
  add(r: FitResult): void {
    this.inner.add(r);
    const v = this.view(r);
    if (!v) return;
    const norm = l2Norm(v);
    let cosine: number | undefined;
    const ref = this.reference;
    if (ref && ref.length === v.length && this.refNorm > 0 && norm > 0) {
      let dot = 0;
      for (let i = 0; i < v.length; i++) dot += v[i]! * ref[i]!;
      cosine = dot / (norm * this.refNorm);
    }
    const loss = r.metrics?.loss;
    this.seen.push({
      deviceId: r.deviceId,
      norm,
      ...(cosine !== undefined ? { cosine, cosineTo: "previous-step" as const } : {}),
      ...(typeof loss === "number" && Number.isFinite(loss) ? { loss } : {}),
      numSamples: r.numSamples,
    });
  }
  /** The update's values (decoded into the scratch array when compressed); undefined when unreadable. */
  private view(r: FitResult): Float32Array | undefined {
    const d = r.delta;
    if (d instanceof Float32Array) return d.length === this.length ? d : undefined;
    if (d && typeof d === "object" && d.encoding === "flz" && d.bytes instanceof Uint8Array) {
      this.scratch ??= new Float32Array(this.length);
      try {
        decodeTensorInto(d.bytes, this.scratch, { length: this.length });
        return this.scratch;
      } catch {
        return undefined; // the inner aggregation accepted it, so this does not happen; never fail the round
      }
    }
    return undefined;
  }
  addAggregate(a: SecureAggregate): void {
    this.inner.addAggregate(a);
  }
  finish(failures: readonly FitFailure[]): ObservedRoundResult {
    const out = this.inner.finish(failures);
    this.scratch = undefined;
    return { ...out, observed: this.seen.splice(0) };
  }
}
