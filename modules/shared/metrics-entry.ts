import { errorFields, type Logger } from "../../core/log";
import { ModuleMetrics, moduleMetricLabels, serveMetrics, METRICS_PORT, type MetricsServer } from "./metrics";
import { errorText, type ConfigProblems, type Env } from "./module-client";

/**
 * The container entry's side of a module's metrics (each module's main.ts): the port from FLOTILLA_METRICS_PORT
 * (default 9600, the IoT Edge convention; 0 = not served), the module's registry with the IoT Edge labels and the
 * process's own metrics, and the `/metrics` server — one that cannot listen (a port in use) is logged on one line
 * with E_METRICS and the module runs on without it.
 */

/** FLOTILLA_METRICS_PORT: an integer from 0 (off) to 65535; a bad value is one of the module's config problems. */
export function readMetricsPort(p: ConfigProblems): number {
  return p.number("FLOTILLA_METRICS_PORT", METRICS_PORT, 0, 65535);
}

/** The registry of a module alone in its process (a container): IoT Edge's labels, and process metrics. */
export function containerModuleMetrics(module: string, env: Env): ModuleMetrics {
  return new ModuleMetrics({ module, labels: moduleMetricLabels(module, env), processMetrics: true });
}

/**
 * Serves `metrics` on `port` (all interfaces: the metrics-collector module and Prometheus scrape it over the
 * module network). Undefined when the port is 0 or cannot be listened on (logged with E_METRICS: the module's work
 * matters more than its metrics).
 */
export async function serveContainerMetrics(
  metrics: ModuleMetrics,
  port: number,
  log: Logger,
): Promise<MetricsServer | undefined> {
  if (port === 0) {
    log.info("metrics not served (FLOTILLA_METRICS_PORT=0)");
    return undefined;
  }
  try {
    const server = await serveMetrics(() => [metrics], { port });
    log.info(`metrics on :${server.port}/metrics`, { metricsPort: server.port });
    return server;
  } catch (e) {
    log.error(errorText(e), { code: errorFields(e).code ?? "E_METRICS" });
    return undefined;
  }
}

/** The module's handle (a plain object) with its stop() also closing the metrics server, after the module's. */
export function alsoClosing<H extends { stop(): Promise<void> }>(
  handle: H,
  server: MetricsServer | undefined,
): H {
  if (!server) return handle;
  return {
    ...handle,
    stop: async () => {
      try {
        await handle.stop();
      } finally {
        await server.close();
      }
    },
  };
}
