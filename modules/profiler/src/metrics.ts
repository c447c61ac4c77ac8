import type { Counter, Gauge } from "prom-client";
import { ModuleMetrics, moduleMetricLabels } from "../../shared/metrics";
import type { Capabilities } from "./profiler";

/**
 * The profiler's Prometheus metrics (docs/metrics.md): every capability it reports in the module twin's
 * `capabilities`, as gauges of the last measurement (base units: seconds, bytes, ratios), created once per
 * profiler instance in its ModuleMetrics (names `flotilla_profiler_<name>`; the link metrics are the module host's).
 */
export interface ProfilerMetrics {
  readonly measurements: Counter;
  /** Sets every gauge from a measurement. */
  record(caps: Capabilities): void;
}

export function profilerMetrics(m: ModuleMetrics): ProfilerMetrics {
  const samplesPerSecond = m.gauge(
    "samples_per_second",
    "Measured training speed by model (capabilities.samplesPerSecond, samples/s)",
    ["model"],
  );
  const threads = m.gauge("threads", "Training threads the speeds were measured with (capabilities.threads)");
  const memory = m.gauge("memory_bytes", "Total memory of the device (capabilities.memoryBytes)");
  const freeMemory = m.gauge(
    "free_memory_bytes",
    "Free memory at the last measurement (capabilities.freeMemoryBytes)",
  );
  const freeDisk = m.gauge(
    "free_disk_bytes",
    "Free disk on the data directory's file system at the last measurement (capabilities.freeDiskBytes)",
  );
  const rtt = m.gauge(
    "rtt_seconds",
    "Median reported-property round trip to the hub (capabilities.rttMs / 1000)",
  );
  const uplink = m.gauge(
    "uplink_bytes_per_second",
    "Uplink throughput of the probe message (capabilities.uplinkBytesPerSecond)",
  );
  const uptime = m.gauge(
    "uptime_seconds",
    "The machine's uptime at the last measurement (capabilities.uptimeSeconds)",
  );
  const availability = m.gauge(
    "availability_ratio",
    "Fraction of the time since the profiler started that it was connected (capabilities.availability)",
  );
  const measuredAt = m.gauge(
    "measured_timestamp_seconds",
    "When the capabilities were last measured, Unix seconds (capabilities.measuredAt)",
  );
  const measured = m.gauge(
    "capability_measured",
    "1 for each capability the last measurement produced, 0 for one it could not measure (null), by capability",
    ["capability"],
  );
  const measurements = m.counter("measurements_total", "Measurements of the capabilities made");
  const setOrUnknown = (g: Gauge, name: string, v: number | null | undefined): void => {
    measured.set({ capability: name }, v === null || v === undefined ? 0 : 1);
    if (v !== null && v !== undefined) g.set(v);
  };
  return {
    measurements,
    record(caps) {
      samplesPerSecond.reset();
      for (const [model, sps] of Object.entries(caps.samplesPerSecond)) samplesPerSecond.set({ model }, sps);
      measured.set({ capability: "samplesPerSecond" }, Object.keys(caps.samplesPerSecond).length > 0 ? 1 : 0);
      setOrUnknown(threads, "threads", caps.threads);
      setOrUnknown(memory, "memoryBytes", caps.memoryBytes);
      setOrUnknown(freeMemory, "freeMemoryBytes", caps.freeMemoryBytes);
      setOrUnknown(freeDisk, "freeDiskBytes", caps.freeDiskBytes);
      setOrUnknown(rtt, "rttMs", caps.rttMs === null ? null : caps.rttMs / 1000);
      setOrUnknown(uplink, "uplinkBytesPerSecond", caps.uplinkBytesPerSecond);
      setOrUnknown(uptime, "uptimeSeconds", caps.uptimeSeconds);
      setOrUnknown(availability, "availability", caps.availability);
      const t = Date.parse(caps.measuredAt);
      setOrUnknown(measuredAt, "measuredAt", Number.isFinite(t) ? t / 1000 : null);
      measurements.inc();
    },
  };
}

/** The profiler's own ModuleMetrics when none is given: IoT Edge's labels from `env`, the device id when known. */
export function defaultProfilerModuleMetrics(
  deviceId: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): ModuleMetrics {
  return new ModuleMetrics({
    module: "profiler",
    labels: moduleMetricLabels("profiler", env, deviceId ? { edge_device: deviceId } : {}),
  });
}
