import { createModuleClient, type Env } from "../../shared/module-client";
import { MODEL_ID } from "./model";
import { runModule } from "../../shared/host";
import type { Logger } from "../../../core/log";
import { loadQuantizerConfig } from "./config";
import { alsoClosing, containerModuleMetrics, serveContainerMetrics } from "../../shared/metrics-entry";
import { startQuantizer, type QuantizerHandle } from "./quantizer";

export { DEFAULT_STATE_DIR, loadQuantizerConfig, type QuantizerConfig } from "./config";
export * from "./quantizer";

/** Container entry: configuration from the environment (validated, naming what is missing); the module owns its client. */
export async function start(log: Logger, env: Env = process.env): Promise<QuantizerHandle> {
  const config = loadQuantizerConfig(env);
  const client = await createModuleClient(config.connection, MODEL_ID);
  log.info(`residuals in ${config.stateDir}`, { stateDir: config.stateDir });
  const metrics = containerModuleMetrics("quantizer", env);
  const handle = await startQuantizer({
    client,
    metrics,
    deviceId: config.connection.deviceId,
    stateDir: config.stateDir,
    maxChunkBytes: config.maxChunkBytes,
    maxBytes: config.maxBytes,
    log,
    closeClient: true,
  });
  // Prometheus text on :9600/metrics (docs/metrics.md); a port that cannot be listened on is logged, not fatal.
  return alsoClosing(handle, await serveContainerMetrics(metrics, config.metricsPort, log));
}

if (require.main === module) runModule("quantizer", (log) => start(log));
