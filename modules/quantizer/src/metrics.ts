import type { Counter, Gauge, Histogram } from "prom-client";
import { ModuleMetrics, moduleMetricLabels } from "../../shared/metrics";

/**
 * The quantizer's Prometheus metrics (docs/metrics.md), created once per quantizer instance in its ModuleMetrics
 * (names `flotilla_quantizer_<name>`; the link metrics are the module host's, modules/shared/link-metrics.ts).
 */
export interface QuantizerMetrics {
  /** Frame bytes of complete updates received / sent. */
  readonly bytesIn: Counter;
  readonly bytesOut: Counter;
  /** Updates sent, by outcome: compressed or passthrough. */
  readonly updates: Counter<"outcome">;
  /** Raw frame bytes / compressed frame bytes of the last compressed update. */
  readonly lastRatio: Gauge;
  readonly ratio: Histogram;
  readonly encodeSeconds: Histogram;
  /** Updates, chunks and frames dropped or sent raw because of a problem, by error code. */
  readonly errors: Counter<"code">;
}

/** Compression ratios: raw ÷ compressed frame bytes (int8 ≈ 4, top-k 1% + int8 ≈ 100+). */
export const RATIO_BUCKETS = [1, 1.5, 2, 4, 8, 16, 32, 64, 128, 256, 512];
/** Seconds: 0.1 ms … 10 s. */
export const ENCODE_BUCKETS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];

export function quantizerMetrics(m: ModuleMetrics): QuantizerMetrics {
  const updates = m.counter("updates_total", "Updates sent on, by outcome (compressed or passthrough)", [
    "outcome",
  ]);
  for (const outcome of ["compressed", "passthrough"]) updates.inc({ outcome }, 0);
  return {
    bytesIn: m.counter("bytes_in_total", "Frame bytes of the complete updates received from the trainer"),
    bytesOut: m.counter("bytes_out_total", "Frame bytes of the updates sent on to the update-queue"),
    updates,
    lastRatio: m.gauge(
      "compression_ratio",
      "Raw frame bytes / compressed frame bytes of the last compressed update",
    ),
    ratio: m.histogram(
      "compression_ratio_updates",
      "Compression ratio (raw / compressed frame bytes) of each compressed update",
      RATIO_BUCKETS,
    ),
    encodeSeconds: m.histogram(
      "encode_seconds",
      "Time to compress one update (codec chain, error feedback, residual saved)",
      ENCODE_BUCKETS,
    ),
    errors: m.counter(
      "errors_total",
      "Problems (bad chunks or frames, failed sends, codec and residual failures), by code",
      ["code"],
    ),
  };
}

/** The quantizer's own ModuleMetrics when none is given: IoT Edge's labels from `env`, the device id given. */
export function defaultQuantizerModuleMetrics(
  deviceId: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): ModuleMetrics {
  return new ModuleMetrics({
    module: "quantizer",
    labels: moduleMetricLabels("quantizer", env, deviceId ? { edge_device: deviceId } : {}),
  });
}
