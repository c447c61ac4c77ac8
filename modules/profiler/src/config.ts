import { ConfigProblems, readConnection, type ConnectionConfig, type Env } from "../../shared/module-client";
import { readMetricsPort } from "../../shared/metrics-entry";

/**
 * The profiler module's settings (validated at start-up, naming every missing or invalid setting):
 *
 *   FLOTILLA_DATA_DIR            directory whose file system's free space is reported   default /data
 *   FLOTILLA_BENCH_SECONDS       time budget of each training benchmark, s              default 5
 *   FLOTILLA_THREADS             threads the benchmark trains with (1 to 8, or auto)    default auto (the cores,
 *                                at most 4): set it as for the trainer module, whose speed it predicts
 *   FLOTILLA_CONNECTION_STRING   module connection string, when not on IoT Edge
 *   FLOTILLA_CA_CERT             PEM file of the gateway's CA, when not on IoT Edge (optional)
 *   FLOTILLA_METRICS_PORT          Prometheus /metrics port (docs/metrics.md), 0 = off  default 9600
 */
export interface ProfilerConfig {
  readonly dataDir: string;
  readonly benchSeconds: number;
  /** FLOTILLA_THREADS; undefined = auto. */
  readonly threads?: number;
  /** FLOTILLA_METRICS_PORT (0: not served). */
  readonly metricsPort: number;
  readonly connection: ConnectionConfig;
}

export function loadProfilerConfig(env: Env): ProfilerConfig {
  const p = new ConfigProblems("profiler", env);
  const dataDir = p.value("FLOTILLA_DATA_DIR") ?? "/data";
  const benchSeconds = p.number("FLOTILLA_BENCH_SECONDS", 5, 0.1, 600, false);
  const threads = p.threads();
  const metricsPort = readMetricsPort(p);
  const connection = readConnection(p);
  p.check();
  return { metricsPort, dataDir, benchSeconds, threads, connection };
}
