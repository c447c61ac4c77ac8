import { createModuleClient, type Env } from "../../shared/module-client";
import { MODEL_ID } from "./model";
import { runModule } from "../../shared/host";
import type { Logger } from "../../../core/log";
import { keyProviderFromEnv } from "../../../azure/keyvault-key-provider";
import { loadTrainerConfig } from "./config";
import { backendThreads, defaultThreads, initBackend } from "../../../core/engine/backend";
import { startTrainer, type TrainerHandle } from "./trainer";
import { InProcessTrainExecutor, type TrainExecutor } from "./executor";
import { alsoClosing, containerModuleMetrics, serveContainerMetrics } from "../../shared/metrics-entry";

export { loadTrainerConfig, type TrainerConfig } from "./config";
export * from "./executor";
export * from "./trainer";
export { frameChunks } from "../../shared/chunks";
export { parseRoundOrder, type RoundOrder } from "./round";

/**
 * The training threads: FLOTILLA_THREADS (or its default, the cores up to 4), capped by the operator's `maxThreads`
 * property when it is set (0: no cap).
 */
export function trainingThreads(configured: number | undefined, maxThreads: number): number {
  const base = configured ?? defaultThreads({});
  return maxThreads > 0 ? Math.max(1, Math.min(base, maxThreads)) : base;
}

/**
 * Container entry: configuration from the environment (validated, naming what is missing); the module owns its
 * client.
 *
 * The wasm backend's thread pool is fixed for the process (core/engine/backend.ts), so it starts after the first twin
 * read, with the threads the `maxThreads` property in effect allows (restored from its reported ack), and training
 * waits for it. When `maxThreads` changes to a value that needs another pool, the module stops once no round is
 * running or waiting (SIGTERM to itself: the usual graceful stop) and IoT Edge's restartPolicy starts it again with
 * the new pool (docs/threads.md).
 */
export async function start(log: Logger, env: Env = process.env): Promise<TrainerHandle> {
  const config = loadTrainerConfig(env);
  const client = await createModuleClient(config.connection, MODEL_ID);
  let backendStarted!: () => void;
  let backendFailed!: (e: unknown) => void;
  const backend = new Promise<void>((resolve, reject) => {
    backendStarted = resolve;
    backendFailed = reject;
  });
  backend.catch(() => undefined); // awaited below and by each round
  const inProcess = new InProcessTrainExecutor();
  const trainExecutor: TrainExecutor = {
    run: async (job, signal, onProgress) => {
      await backend;
      return inProcess.run(job, signal, onProgress);
    },
  };
  /** The threads the pool was started with (undefined until then), and whether a restart is on its way. */
  const pool: { requested?: number; restarting: boolean; trainer?: TrainerHandle } = { restarting: false };
  const onMaxThreads = (maxThreads: number): void => {
    if (pool.requested === undefined || pool.restarting) return; // at start-up: the pool starts below with it
    const want = trainingThreads(config.threads, maxThreads);
    if (want === pool.requested) return;
    pool.restarting = true;
    log.info(
      `maxThreads ${maxThreads}: the training thread pool (${pool.requested} threads) becomes ${want}; the module restarts when no round runs`,
      { maxThreads, threads: pool.requested, next: want },
    );
    void (async () => {
      await new Promise((r) => setImmediate(r)); // the property's ack first
      await pool.trainer?.idle();
      process.kill(process.pid, "SIGTERM");
    })();
  };
  const metrics = containerModuleMetrics("trainer", env);
  const trainer = await startTrainer({
    client,
    metrics,
    trainExecutor,
    onMaxThreads,
    deviceId: config.connection.deviceId,
    dataDir: config.dataDir,
    ...(config.workDir !== undefined ? { workDir: config.workDir } : {}),
    ...(config.evalDir !== undefined ? { evalDir: config.evalDir } : {}),
    maxChunkBytes: config.maxChunkBytes,
    // Secure aggregation's identity key: Key Vault when FLOTILLA_KEYVAULT_URL is set, else the key file in
    // FLOTILLA_KEY_DIR (azure/keyvault-key-provider.ts).
    keys: keyProviderFromEnv(env as NodeJS.ProcessEnv),
    log,
    closeClient: true,
  });
  // The twin was read (the properties' last good values restored): the pool starts with the threads they allow.
  pool.trainer = trainer;
  pool.requested = trainingThreads(config.threads, trainer.properties().maxThreads);
  try {
    await initBackend({ threads: pool.requested });
    backendStarted();
  } catch (e) {
    backendFailed(e);
    await trainer.stop().catch(() => undefined);
    throw e;
  }
  const dataDir = trainer.properties().dataDir;
  log.info(
    `data in ${dataDir}${config.evalDir ? `, held-out data in ${config.evalDir}` : ""}; training on ${backendThreads()} thread(s)`,
    { dataDir, evalDir: config.evalDir, threads: backendThreads(), workDir: config.workDir },
  );
  // Prometheus text on :9600/metrics (docs/metrics.md); a port that cannot be listened on is logged, not fatal.
  return alsoClosing(trainer, await serveContainerMetrics(metrics, config.metricsPort, log));
}

if (require.main === module) runModule("trainer", (log) => start(log));
