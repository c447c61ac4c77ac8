/**
 * Closing a round, once for the simulator and the Function: every update (or a secure round's unmasked sum) goes
 * into the strategy's aggregation — wrapped by differential privacy when the job has it — after the job's
 * sample-count policy (core/round/samples.ts) and the layout check; every participant that delivered nothing, sent
 * a failure frame or was refused becomes a failure; `finish()` gives the next global model with the round's
 * training metrics (core/strategies/metrics.ts: the sample-weighted training loss, computed there only) and says
 * whether that model is finite (core/tensor/finite.ts).
 *
 * Updates may be streamed in as they arrive (the simulator) or read back one at a time at the deadline (the
 * Function): only the aggregation's running sum and the current update are in memory.
 */
import { FlotillaError, errorMessage, isFlotillaError } from "../errors";
import type {
  FitFailure,
  FitResult,
  RoundAggregation,
  RoundMetrics,
  UpdateReport,
} from "../strategies/strategy";
import { nonFiniteModelReason } from "../tensor/finite";
import type { RobustReport, RobustRoundResult } from "../robust/aggregation";
import type { DeviceObservation } from "../robust/quality";
import type { ObservedRoundResult } from "./aggregation";
import type { WeightLayout } from "../tensor/layout";
import { boundSamples, E_ROUND_SAMPLES, type SamplePolicy } from "./samples";

export interface RoundCloserOptions {
  readonly round: number;
  /** The strategy's aggregation of the round (DifferentialPrivacy.aggregate wraps it for DP jobs). */
  readonly aggregation: RoundAggregation;
  /** Bounds each update's sample-count claim (the Function's jobs); unset: claims are taken as they are. */
  readonly samplePolicy?: SamplePolicy;
  /** The job's weight layout: an update with another layout hash is refused (E_MODEL_LAYOUT). */
  readonly layoutHash?: string;
  /** One line per noteworthy event (a clipped or refused sample count). */
  readonly log?: (line: string) => void;
}

/** What closing a round produced. */
export interface RoundOutcome {
  readonly round: number;
  /** The next global model (the current one when nothing was aggregated). */
  readonly weights: Float32Array;
  /** The strategy's round metrics (training loss and accuracy of the aggregated updates). */
  readonly metrics: RoundMetrics;
  /**
   * Devices whose update was accepted into the aggregation, in arrival order. A robust rule may still leave some
   * of them out of the aggregate: `robust.kept` / `robust.dropped` say which.
   */
  readonly completed: readonly string[];
  /** The robust aggregation's report (core/robust/aggregation.ts), when the job has a robust aggregator. */
  readonly robust?: RobustReport;
  /** The quality observer's per-device norm, cosine and loss (core/round/aggregation.ts, `observe`). */
  readonly observed?: readonly DeviceObservation[];
  readonly failures: readonly FitFailure[];
  /** `aggregated` when at least one update went in; `failed` otherwise (the model is kept). */
  readonly status: "aggregated" | "failed";
  /** Set when the next model is not finite: one line naming the round (nothing may be published). */
  readonly diverged?: string;
  /** Longest local training among the completed participants, ms. */
  readonly slowestTrainMs: number;
  readonly sampleCountClipped: number;
  readonly sampleCountRejected: number;
}

export interface SecureSum {
  readonly included: readonly string[];
  readonly totalWeight: number;
  readonly mean: Float32Array;
  /** The included devices' reports (sample count, loss, accuracy), sent in the clear beside their masked input. */
  readonly reports: readonly UpdateReport[];
  readonly slowestTrainMs?: number;
}

/** One round's close routine: updates and failures in, the next model and its outcome out. */
export class RoundCloser {
  private readonly failures: FitFailure[] = [];
  private readonly completed: string[] = [];
  private readonly done = new Set<string>();
  private clipped = 0;
  private slowest = 0;

  constructor(private readonly o: RoundCloserOptions) {}

  /**
   * Adds one device's update. `declared` is the sample count it reported when the round opened. Returns the
   * failure when the update was refused (sample count, layout, or the aggregation itself); never throws for a bad
   * update.
   */
  update(u: FitResult & { readonly layoutHash?: string }, declared?: number): FitFailure | undefined {
    try {
      if (this.o.layoutHash !== undefined && u.layoutHash !== undefined && u.layoutHash !== this.o.layoutHash)
        throw new FlotillaError("E_MODEL_LAYOUT", `update from '${u.deviceId}' has another weight layout`);
      let numSamples = u.numSamples;
      if (this.o.samplePolicy) {
        const w = boundSamples(this.o.samplePolicy, u.deviceId, declared, u.numSamples);
        if (w.outcome !== "ok") this.o.log?.(`sample count ${w.outcome}: ${w.reason}`);
        if (w.outcome === "rejected") {
          return this.fail(u.deviceId, E_ROUND_SAMPLES, w.reason);
        }
        if (w.outcome === "clipped") this.clipped++;
        numSamples = w.numSamples;
      }
      this.o.aggregation.add({
        deviceId: u.deviceId,
        numSamples,
        delta: u.delta,
        metrics: u.metrics,
        ...(u.dpClipBit !== undefined ? { dpClipBit: u.dpClipBit } : {}),
        ...(u.discount !== undefined ? { discount: u.discount } : {}),
      });
    } catch (e) {
      return this.fail(u.deviceId, updateCode(e), errorMessage(e));
    }
    this.completed.push(u.deviceId);
    this.done.add(u.deviceId);
    if (Number.isFinite(u.metrics.trainMs)) this.slowest = Math.max(this.slowest, u.metrics.trainMs);
    return undefined;
  }

  /**
   * Adds a secure round's unmasked sum as one aggregate (the strategy weighs it as its devices). A refused sum
   * (e.g. not finite) fails each of its devices; the model is then kept.
   */
  secure(sum: SecureSum): void {
    if (sum.included.length === 0) return;
    try {
      this.o.aggregation.addAggregate({
        deviceIds: sum.included,
        totalSamples: sum.totalWeight,
        mean: sum.mean,
        reports: sum.reports,
      });
    } catch (e) {
      for (const id of sum.included) this.fail(id, updateCode(e), errorMessage(e));
      return;
    }
    for (const id of sum.included) {
      this.completed.push(id);
      this.done.add(id);
    }
    this.slowest = Math.max(this.slowest, sum.slowestTrainMs ?? 0);
  }

  /** Records a participant's failure (the first one per device counts); returns it. */
  fail(deviceId: string, code: string, reason: string): FitFailure {
    const f = { deviceId, code, reason };
    if (!this.done.has(deviceId)) {
      this.done.add(deviceId);
      this.failures.push(f);
    }
    return f;
  }

  /** Updates added so far. */
  get count(): number {
    return this.o.aggregation.count;
  }

  /**
   * Closes the round: each of `participants` neither added nor failed delivered nothing in time (E_ROUND_TIMEOUT);
   * the aggregation's `finish` gives the next model, checked for non-finite values.
   */
  finish(participants: readonly string[], layout?: WeightLayout): RoundOutcome {
    for (const id of participants)
      if (!this.done.has(id)) this.fail(id, "E_ROUND_TIMEOUT", "no update before the round deadline");
    const count = this.o.aggregation.count;
    const { weights, metrics, robust, observed } = this.o.aggregation.finish(
      this.failures,
    ) as RobustRoundResult & ObservedRoundResult;
    const diverged = nonFiniteModelReason(weights, this.o.round, layout);
    return {
      round: this.o.round,
      weights,
      metrics,
      completed: this.completed,
      failures: this.failures,
      // A robust rule may leave every update out (FLTrust trusting nobody): then nothing was aggregated.
      status: count > 0 && (robust === undefined || robust.kept.length > 0) ? "aggregated" : "failed",
      ...(diverged !== undefined ? { diverged } : {}),
      ...(robust ? { robust } : {}),
      ...(observed ? { observed } : {}),
      slowestTrainMs: this.slowest,
      sampleCountClipped: this.clipped,
      sampleCountRejected: this.failures.filter((f) => f.code === E_ROUND_SAMPLES).length,
    };
  }
}

/** The failure code of an update the aggregation refused: its own, else E_ROUND_UPDATE. */
function updateCode(e: unknown): string {
  if (isFlotillaError(e)) return e.code;
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === "string" ? c : "E_ROUND_UPDATE";
}
