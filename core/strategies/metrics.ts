/**
 * A round's training metrics: the one place the sample-weighted training loss is computed (the strategies'
 * aggregation and the DP wrapper use it; the simulator's and the Function's round records read its result).
 *
 * Each aggregated update weighs by its sample count n_k: trainLoss = Σ n_k·loss_k / Σ n_k over the updates that
 * reported a finite loss (a device under distributed or local DP withholds it and sends null), likewise accuracy.
 * Sums are float64 in arrival order, so the result does not depend on where it is computed.
 */
import type { RoundMetrics, SecureAggregate, UpdateReport } from "./strategy";

export class RoundMetricsSum {
  private updates = 0;
  private samples = 0;
  private lossSum = 0;
  private lossWeight = 0;
  private accSum = 0;
  private accWeight = 0;

  /** One aggregated update. */
  addUpdate(
    numSamples: number,
    metrics: { loss?: number | null; accuracy?: number | null } | undefined,
  ): void {
    this.updates++;
    this.samples += numSamples;
    this.addReport({ numSamples, loss: metrics?.loss, accuracy: metrics?.accuracy });
  }

  /** A secure aggregate: its devices count as updates, its weight as samples, its reports for loss/accuracy. */
  addAggregate(a: SecureAggregate): void {
    this.updates += a.deviceIds.length;
    this.samples += a.totalSamples;
    for (const r of a.reports ?? []) this.addReport(r);
  }

  private addReport(r: UpdateReport): void {
    const n = r.numSamples;
    if (!(typeof n === "number" && n > 0 && Number.isFinite(n))) return;
    if (typeof r.loss === "number" && Number.isFinite(r.loss)) {
      this.lossSum += r.loss * n;
      this.lossWeight += n;
    }
    if (typeof r.accuracy === "number" && Number.isFinite(r.accuracy)) {
      this.accSum += r.accuracy * n;
      this.accWeight += n;
    }
  }

  result(): RoundMetrics {
    return {
      updates: this.updates,
      totalSamples: this.samples,
      trainLoss: this.lossWeight > 0 ? this.lossSum / this.lossWeight : NaN,
      trainAccuracy: this.accWeight > 0 ? this.accSum / this.accWeight : NaN,
    };
  }
}
