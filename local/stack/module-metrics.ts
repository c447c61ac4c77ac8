/**
 * The local stack's module metrics: every module instance of every simulated device gets its own ModuleMetrics
 * (the labels IoT Edge would give it: the hub's name, the device id, a fresh instance number, the module name) and
 * its own `/metrics` endpoint on 127.0.0.1 (a free port), as each module container serves :9600 on a real device.
 * The stack lists them (`LocalStack.metricsEndpoints()`) for Prometheus and the tests (docs/metrics.md).
 */
import {
  ModuleMetrics,
  moduleMetricLabels,
  serveMetrics,
  type MetricsEndpoint,
  type MetricsServer,
} from "../../modules/shared/metrics";

export const STACK_MODULES = ["trainer", "quantizer", "update-queue", "profiler"] as const;
export type StackModule = (typeof STACK_MODULES)[number];

/** One device's four registries (created before its modules start, handed to them). */
export function deviceModuleMetrics(hubName: string, deviceId: string): Record<StackModule, ModuleMetrics> {
  const make = (module: StackModule): ModuleMetrics =>
    new ModuleMetrics({
      module,
      labels: moduleMetricLabels(module, {}, { iothub: hubName, edge_device: deviceId, module_name: module }),
    });
  return {
    trainer: make("trainer"),
    quantizer: make("quantizer"),
    "update-queue": make("update-queue"),
    profiler: make("profiler"),
  };
}

/** Serves each module's registry on its own 127.0.0.1 port; the endpoints, and a close for them all. */
export async function serveDeviceMetrics(
  deviceId: string,
  metrics: Readonly<Record<StackModule, ModuleMetrics>>,
): Promise<{ endpoints: MetricsEndpoint[]; servers: MetricsServer[] }> {
  const servers: MetricsServer[] = [];
  const endpoints: MetricsEndpoint[] = [];
  try {
    for (const module of STACK_MODULES) {
      const server = await serveMetrics(() => [metrics[module]], { port: 0, host: "127.0.0.1" });
      servers.push(server);
      endpoints.push({ deviceId, module, url: server.url });
    }
  } catch (e) {
    await Promise.all(servers.map((s) => s.close()));
    throw e;
  }
  return { endpoints, servers };
}
