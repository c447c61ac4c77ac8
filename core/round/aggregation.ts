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
 * norm, its reported loss and (by a count sketch, not by keeping the update) its cosine to the round's mean update;
 * the result carries them as `observed`.
 */
import type { DifferentialPrivacy } from "../privacy/dp";
import { robustAggregation, updateValues } from "../robust/aggregation";
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
  /** Secure rounds of a `norm:C+mean` job: the devices were told to clip to C before masking (RobustContext). */
  readonly boundOnDevices?: boolean;
  /** Contribution quality: record each update's norm, loss and cosine to the round's mean (result `observed`). */
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
      ...(o.boundOnDevices ? { boundOnDevices: true } : {}),
    });
  }
  if (o.observe) agg = new ObservingAggregation(agg, global.length);
  if (o.interceptor) agg = o.interceptor.wrap(agg, { round, global });
  return agg;
}

/** Count-sketch width: the cosine estimate's standard error is about 1/√SKETCH ≈ 0.03. */
const SKETCH = 1024;

/** Adds `v` into the count sketch `out` (bucket and sign of each index from one 32-bit integer mix). */
function sketchInto(v: Float32Array, out: Float64Array): void {
  const mask = out.length - 1;
  for (let i = 0; i < v.length; i++) {
    let h = Math.imul(i ^ 0x5bd1e995, 0x9e3779b1);
    h ^= h >>> 15;
    h = Math.imul(h, 0x85ebca77);
    h ^= h >>> 13;
    out[h & mask]! += h < 0 ? -v[i]! : v[i]!;
  }
}

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

/**
 * The quality observer: passes every update on unchanged and records its norm, its reported training loss and its
 * cosine to the round's sample-weighted mean update. It keeps no update: each one is reduced to a count sketch of
 * SKETCH values (Charikar, Chen & Farach-Colton 2002; the sketch FetchSGD, Rothchild et al. 2020, aggregates),
 * whose inner products estimate the updates' without bias, so at `finish` the mean's sketch is the weighted mean of
 * the sketches and each cosine is estimated from them (n × 8 KB for n updates, whatever the model size). A
 * compressed update is decoded into one scratch array; an update the rest of the chain refuses is not recorded
 * (its failure is).
 */
class ObservingAggregation implements RoundAggregation {
  private readonly seen: { o: DeviceObservation; sketch: Float64Array; weight: number }[] = [];
  private scratch: Float32Array | undefined;
  constructor(
    private readonly inner: RoundAggregation,
    private readonly length: number,
  ) {}
  get count(): number {
    return this.inner.count;
  }
  add(r: FitResult): void {
    this.inner.add(r);
    const v = this.view(r);
    if (!v) return;
    const sketch = new Float64Array(SKETCH);
    sketchInto(v, sketch);
    const loss = r.metrics?.loss;
    this.seen.push({
      o: {
        deviceId: r.deviceId,
        norm: l2Norm(v),
        ...(typeof loss === "number" && Number.isFinite(loss) ? { loss } : {}),
        numSamples: r.numSamples,
      },
      sketch,
      weight: r.numSamples * (r.discount ?? 1),
    });
  }
  /** The update's values (decoded into the scratch array when compressed); undefined when unreadable. */
  private view(r: FitResult): Float32Array | undefined {
    if (!(r.delta instanceof Float32Array)) this.scratch ??= new Float32Array(this.length);
    try {
      return updateValues(r, this.length, this.scratch);
    } catch {
      return undefined; // the inner aggregation accepted it, so this does not happen; never fail the round
    }
  }

  addAggregate(a: SecureAggregate): void {
    this.inner.addAggregate(a);
  }
  finish(failures: readonly FitFailure[]): ObservedRoundResult {
    const out = this.inner.finish(failures);
    this.scratch = undefined;
    const seen = this.seen.splice(0);
    const mean = new Float64Array(SKETCH);
    const total = seen.reduce((s, x) => s + (x.weight > 0 ? x.weight : 0), 0);
    if (total > 0)
      for (const x of seen)
        for (let i = 0; i < SKETCH; i++) mean[i]! += (x.sketch[i]! * Math.max(0, x.weight)) / total;
    const meanNorm = Math.sqrt(dot(mean, mean));
    const observed = seen.map(({ o, sketch }) => {
      const n = Math.sqrt(dot(sketch, sketch));
      if (!(n > 0 && meanNorm > 0) || seen.length < 2) return o;
      const cosine = Math.max(-1, Math.min(1, dot(sketch, mean) / (n * meanNorm)));
      return { ...o, cosine, cosineTo: "round-mean" as const };
    });
    return { ...out, observed };
  }
}

/** One interceptor from several (undefined ones skipped): the first listed is outermost, sees updates first. */
export function chainInterceptors(
  ...list: readonly (RoundInterceptor | undefined)[]
): RoundInterceptor | undefined {
  const present = list.filter((i): i is RoundInterceptor => i !== undefined);
  if (present.length <= 1) return present[0];
  return {
    wrap: (aggregation, ctx) => present.reduceRight((agg, i) => i.wrap(agg, ctx), aggregation),
  };
}
