/**
 * One home for a round's aggregation chain, used by the simulator's sync and async drivers and by the Function's
 * sync and async rounds alike:
 *
 *   [interceptor (simulator attacks)] → [robust rule + norm bound (core/robust)] → [differential privacy] → strategy
 *
 * The strategy's aggregation is the innermost (its server step turns whatever mean reaches it into the next model);
 * DP wraps it when the job has DP; a robust spec other than the plain mean wraps that (DP and robust rules never
 * combine: core/robust/spec.ts checkAggregatorCompatible refuses it when the job is configured); the simulator may
 * put an interceptor outermost to play the round's attackers (local/sim/attacks).
 */
import type { DifferentialPrivacy } from "../privacy/dp";
import { robustAggregation } from "../robust/aggregation";
import { isPlainMean, type AggregatorSpec } from "../robust/spec";
import type { RoundAggregation, Strategy } from "../strategies/strategy";

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
  if (o.interceptor) agg = o.interceptor.wrap(agg, { round, global });
  return agg;
}
