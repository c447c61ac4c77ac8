/**
 * The documented metrics the monitoring tests check the dashboard, the rules and a real Prometheus against: the
 * modules' (the tables of docs/metrics.md, test/helpers/metrics-doc.ts) and the aggregation Function's
 * (AGGREGATOR_METRICS, served on GET /api/metrics).
 */
import { AGGREGATOR_METRICS } from "../../cloud/aggregator/src/telemetry";
import { documentedMetrics, type DocumentedMetric } from "../helpers/metrics-doc";

export function documentedModuleMetrics(): DocumentedMetric[] {
  return documentedMetrics();
}

/** Every documented metric name (histograms and summaries without _bucket/_sum/_count). */
export function documentedMetricNames(): Set<string> {
  return new Set([...documentedMetrics().map((m) => m.name), ...Object.values(AGGREGATOR_METRICS)]);
}
