import { createModuleClient, type Env } from "../../shared/module-client";
import { MODEL_ID } from "./model";
import { runModule } from "../../shared/host";
import type { Logger } from "../../../core/log";
import { keyProviderFromEnv } from "../../../azure/keyvault-key-provider";
import { loadTrainerConfig } from "./config";
import { backendThreads, initBackend } from "../../../core/engine/backend";
import { startTrainer, type TrainerHandle } from "./trainer";
import { alsoClosing, containerModuleMetrics, serveContainerMetrics } from "../../shared/metrics-entry";

export { loadTrainerConfig, type TrainerConfig } from "./config";
export * from "./executor";
export * from "./trainer";
export { frameChunks } from "../../shared/chunks";
export { parseRoundOrder, type RoundOrder } from "./round";

/** Container entry: configuration from the environment (validated, naming what is missing); the module owns its client. */
export async function start(log: Logger, env: Env = process.env): Promise<TrainerHandle> {
  const config = loadTrainerConfig(env);
  // The backend's thread pool is fixed for the process: started here, before any model, with FLOTILLA_THREADS.
  await initBackend({ threads: config.threads });
  const client = await createModuleClient(config.connection, MODEL_ID);
  log.info(
    `data in ${config.dataDir}${config.evalDir ? `, held-out data in ${config.evalDir}` : ""}; training on ${backendThreads()} thread(s)`,
    {
      dataDir: config.dataDir,
      evalDir: config.evalDir,
      threads: backendThreads(),
    },
  );
  const metrics = containerModuleMetrics("trainer", env);
  const trainer = await startTrainer({
    client,
    metrics,
    deviceId: config.connection.deviceId,
    dataDir: config.dataDir,
    ...(config.evalDir !== undefined ? { evalDir: config.evalDir } : {}),
    maxChunkBytes: config.maxChunkBytes,
    // Secure aggregation's identity key: Key Vault when FLOTILLA_KEYVAULT_URL is set, else the key file in
    // FLOTILLA_KEY_DIR (azure/keyvault-key-provider.ts).
    keys: keyProviderFromEnv(env as NodeJS.ProcessEnv),
    log,
    closeClient: true,
  });
  // Prometheus text on :9600/metrics (docs/metrics.md); a port that cannot be listened on is logged, not fatal.
  return alsoClosing(trainer, await serveContainerMetrics(metrics, config.metricsPort, log));
}

if (require.main === module) runModule("trainer", (log) => start(log));
