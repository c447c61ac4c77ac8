import { randomUUID } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry, Summary } from "prom-client";
import { FlotillaError } from "../../core/errors";
import { csField, type Env } from "./module-client";

/**
 * Prometheus metrics of a Flotilla edge module, the IoT Edge way (docs/monitoring.md):
 *
 * - one prom-client Registry per module instance (never the global one: a launcher runs many modules of many
 *   devices in one process, each with its own registry);
 * - metric names `flotilla_<module>_<name>` (`update-queue` → `flotilla_update_queue_`), as edgeHub's and
 *   edgeAgent's built-in metrics carry `edgehub_` / `edgeAgent_`;
 * - the labels edgeHub and edgeAgent put on every sample — `iothub`, `edge_device`, `instance_number` (a fresh
 *   UUID per start, so a restart is visible) and `module_name` — from the IoT Edge runtime's environment
 *   (IOTEDGE_IOTHUBHOSTNAME, IOTEDGE_DEVICEID, IOTEDGE_MODULEID), or from the connection string when run outside
 *   IoT Edge;
 * - served as Prometheus text on `:9600/metrics` (the port the metrics-collector module scrapes by convention,
 *   https://learn.microsoft.com/azure/iot-edge/how-to-collect-and-transport-metrics), FLOTILLA_METRICS_PORT to
 *   change it, 0 to turn it off.
 */

/** The port IoT Edge modules conventionally serve `/metrics` on (edgeHub and edgeAgent do too). */
export const METRICS_PORT = 9600;
export const METRICS_PATH = "/metrics";

/** The labels on every sample of a module (names as edgeHub/edgeAgent use them). */
export interface ModuleMetricLabels {
  readonly iothub: string;
  readonly edge_device: string;
  readonly instance_number: string;
  readonly module_name: string;
}

/** `update-queue` → `flotilla_update_queue_`. */
export function metricPrefix(moduleName: string): string {
  return `flotilla_${moduleName.replace(/[^a-zA-Z0-9_]/g, "_")}_`;
}

/**
 * The default labels of a module: IoT Edge's variables when set, else the fields of FLOTILLA_CONNECTION_STRING
 * (HostName, DeviceId, ModuleId), else `overrides` (a launcher that knows its devices passes them), else "unknown".
 */
export function moduleMetricLabels(
  moduleName: string,
  env: Env = process.env,
  overrides: Partial<ModuleMetricLabels> = {},
): ModuleMetricLabels {
  const cs = env.FLOTILLA_CONNECTION_STRING ?? env.EdgeHubConnectionString;
  const field = (name: string): string | undefined => (cs ? csField(cs, name) : undefined);
  return {
    iothub: overrides.iothub ?? env.IOTEDGE_IOTHUBHOSTNAME ?? field("HostName") ?? "unknown",
    edge_device: overrides.edge_device ?? env.IOTEDGE_DEVICEID ?? field("DeviceId") ?? "unknown",
    instance_number: overrides.instance_number ?? randomUUID(),
    module_name: overrides.module_name ?? env.IOTEDGE_MODULEID ?? field("ModuleId") ?? moduleName,
  };
}

export interface ModuleMetricsOptions {
  /** The module's name (trainer, quantizer, update-queue, profiler): the metric prefix. */
  readonly module: string;
  readonly labels: ModuleMetricLabels;
  /**
   * Also the process's own metrics (CPU, memory, event loop lag, GC; prom-client's default metrics, prefixed like
   * the module's). For a module alone in its process (the container); a launcher running many modules in one
   * process leaves it off (each would report the same process).
   */
  readonly processMetrics?: boolean;
}

/**
 * A module's metrics: a registry with the module's default labels, and factories that prefix names. The module
 * creates its metrics once at start and updates them; `text()` is the exposition.
 */
export class ModuleMetrics {
  readonly registry = new Registry();
  readonly prefix: string;
  readonly labels: ModuleMetricLabels;

  constructor(readonly options: ModuleMetricsOptions) {
    this.prefix = metricPrefix(options.module);
    this.labels = options.labels;
    this.registry.setDefaultLabels({ ...options.labels });
    if (options.processMetrics) {
      collectDefaultMetrics({ register: this.registry, prefix: this.prefix });
      // prom-client's totals of active handles, requests and resources are gauges named `_total`, which
      // `promtool check metrics` refuses (a non-counter must not end in _total); the same counts by type remain
      // (nodejs_active_handles, nodejs_active_requests, nodejs_active_resources).
      for (const metric of this.registry.getMetricsAsArray())
        if (metric.name.endsWith("_total") && (metric as { type?: unknown }).type !== "counter")
          this.registry.removeSingleMetric(metric.name);
    }
  }

  /** A counter `<prefix><name>` (name without the prefix; Prometheus appends nothing: end it in `_total`). */
  counter<L extends string = string>(name: string, help: string, labelNames: readonly L[] = []): Counter<L> {
    return new Counter<L>({ name: this.prefix + name, help, labelNames, registers: [this.registry] });
  }

  gauge<L extends string = string>(
    name: string,
    help: string,
    labelNames: readonly L[] = [],
    collect?: (this: Gauge<L>) => void | Promise<void>,
  ): Gauge<L> {
    return new Gauge<L>({ name: this.prefix + name, help, labelNames, registers: [this.registry], collect });
  }

  histogram<L extends string = string>(
    name: string,
    help: string,
    buckets: readonly number[],
    labelNames: readonly L[] = [],
  ): Histogram<L> {
    return new Histogram<L>({
      name: this.prefix + name,
      help,
      labelNames,
      buckets: [...buckets],
      registers: [this.registry],
    });
  }

  summary<L extends string = string>(name: string, help: string, labelNames: readonly L[] = []): Summary<L> {
    return new Summary<L>({ name: this.prefix + name, help, labelNames, registers: [this.registry] });
  }

  /** The Prometheus text exposition (format 0.0.4). */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/** A running `/metrics` endpoint. */
export interface MetricsServer {
  readonly port: number;
  readonly url: string;
  close(): Promise<void>;
}

/**
 * Serves registries as Prometheus text on `http://host:port/metrics` (port 0: any free port). Several registries
 * (one module's, or a launcher's modules of one device) are merged into one exposition. A collect that fails answers
 * 500 with its message; it never brings the module down.
 */
export async function serveMetrics(
  sources: () => readonly ModuleMetrics[],
  options: { readonly port?: number; readonly host?: string } = {},
): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    if (req.method !== "GET" || url.pathname !== METRICS_PATH) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    const metrics = sources();
    const registry =
      metrics.length === 1 ? metrics[0]!.registry : Registry.merge(metrics.map((m) => m.registry));
    registry.metrics().then(
      (text) => res.writeHead(200, { "content-type": registry.contentType }).end(text),
      (e: unknown) =>
        res
          .writeHead(500, { "content-type": "text/plain" })
          .end(`E_METRICS: ${e instanceof Error ? e.message : String(e)}\n`),
    );
  });
  const host = options.host ?? "0.0.0.0";
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e) =>
      reject(
        new FlotillaError(
          "E_METRICS",
          `cannot serve metrics on port ${options.port ?? METRICS_PORT}: ${e.message}`,
          { cause: e },
        ),
      ),
    );
    server.listen(options.port ?? METRICS_PORT, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: `http://${host === "0.0.0.0" ? "127.0.0.1" : host}:${port}${METRICS_PATH}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Where one module instance's metrics are served (the local stack lists them for Prometheus and tests). */
export interface MetricsEndpoint {
  readonly deviceId: string;
  /** trainer | quantizer | update-queue | profiler */
  readonly module: string;
  /** http://127.0.0.1:PORT/metrics */
  readonly url: string;
}
