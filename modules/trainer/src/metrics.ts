import type { Counter, Gauge, Histogram } from "prom-client";
import { ModuleMetrics, moduleMetricLabels } from "../../shared/metrics";

/**
 * The trainer's Prometheus metrics (docs/metrics.md), created once per trainer instance in its ModuleMetrics
 * (names `flotilla_trainer_<name>`; the link metrics are the module host's, modules/shared/link-metrics.ts).
 */
export interface TrainerMetrics {
  readonly roundsStarted: Counter;
  readonly roundsCompleted: Counter;
  /** by `reason`: the round's error code */
  readonly roundsFailed: Counter<"reason">;
  readonly trainingSeconds: Histogram;
  readonly samplesPerSecond: Gauge;
  readonly localLoss: Gauge;
  readonly localAccuracy: Gauge;
  readonly localSamples: Gauge;
  readonly downloadBytes: Counter;
  readonly downloadSeconds: Histogram;
  /** by `kind`: evaluate (the global model on the local data, after a round) or predict (the direct method) */
  readonly inferenceSeconds: Histogram<"kind">;
  readonly inferenceAccuracy: Gauge;
}

/** Seconds: 0.1 s … ~30 min (a round trains from a fraction of a second to many minutes). */
export const TRAINING_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];
/** Seconds: 1 ms … 2 min. */
export const DOWNLOAD_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120];
/** Seconds: 0.1 ms … 10 s. */
export const INFERENCE_BUCKETS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];

export function trainerMetrics(m: ModuleMetrics): TrainerMetrics {
  const inferenceSeconds = m.histogram(
    "onnx_inference_seconds",
    "Duration of one ONNX inference call with onnxruntime, by kind (evaluate: the global model on the local data; predict: the direct method)",
    INFERENCE_BUCKETS,
    ["kind"],
  );
  for (const kind of ["evaluate", "predict"]) inferenceSeconds.zero({ kind });
  return {
    roundsStarted: m.counter("rounds_started_total", "Rounds this trainer started (model download begun)"),
    roundsCompleted: m.counter(
      "rounds_completed_total",
      "Rounds whose update (or secure aggregation's key advertisement) was sent",
    ),
    roundsFailed: m.counter("rounds_failed_total", "Rounds that failed, by reason (the error code)", [
      "reason",
    ]),
    trainingSeconds: m.histogram("training_seconds", "Local training time of a round", TRAINING_BUCKETS),
    samplesPerSecond: m.gauge("samples_per_second", "Training throughput of the last round (samples/s)"),
    localLoss: m.gauge("local_loss", "Training loss of the last round on the local data"),
    localAccuracy: m.gauge("local_accuracy", "Training accuracy of the last round on the local data (0..1)"),
    localSamples: m.gauge("local_samples", "Samples the last round trained on"),
    downloadBytes: m.counter("model_download_bytes_total", "Bytes of global models downloaded"),
    downloadSeconds: m.histogram(
      "model_download_seconds",
      "Duration of a global model download (from the request to the last byte)",
      DOWNLOAD_BUCKETS,
    ),
    inferenceSeconds,
    inferenceAccuracy: m.gauge(
      "onnx_eval_accuracy",
      "Accuracy of the last global model evaluated with onnxruntime on the local data (0..1)",
    ),
  };
}

/** The trainer's own ModuleMetrics when none is given: IoT Edge's labels from `env`, the device id given. */
export function defaultTrainerModuleMetrics(
  deviceId: string,
  env: NodeJS.ProcessEnv = process.env,
): ModuleMetrics {
  return new ModuleMetrics({
    module: "trainer",
    labels: moduleMetricLabels("trainer", env, { edge_device: deviceId }),
  });
}
