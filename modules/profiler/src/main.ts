import { createModuleClient, type Env } from "../../shared/module-client";
import { MODEL_ID } from "./model";
import { runModule } from "../../shared/host";
import type { Logger } from "../../../core/log";
import { loadProfilerConfig } from "./config";
import { alsoClosing, containerModuleMetrics, serveContainerMetrics } from "../../shared/metrics-entry";
import { startProfiler, type ProfilerHandle } from "./profiler";

export { loadProfilerConfig, type ProfilerConfig } from "./config";
export * from "./profiler";

/** Container entry: configuration from the environment (validated, naming what is missing); the module owns its client. */
export async function start(log: Logger, env: Env = process.env): Promise<ProfilerHandle> {
  const config = loadProfilerConfig(env);
  const client = await createModuleClient(config.connection, MODEL_ID);
  const metrics = containerModuleMetrics("profiler", env);
  const handle = await startProfiler({
    client,
    metrics,
    dataDir: config.dataDir,
    benchSeconds: config.benchSeconds,
    threads: config.threads,
    log,
    closeClient: true,
  });
  // Prometheus text on :9600/metrics (docs/metrics.md); a port that cannot be listened on is logged, not fatal.
  return alsoClosing(handle, await serveContainerMetrics(metrics, config.metricsPort, log));
}

if (require.main === module) runModule("profiler", (log) => start(log));
