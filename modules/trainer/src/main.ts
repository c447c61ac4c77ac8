import { createModuleClient, errorText, runUntilSignal, type Env } from "../../shared/module-client";
import { keyProviderFromEnv } from "../../../azure/keyvault-key-provider";
import { loadTrainerConfig } from "./config";
import { startTrainer } from "./trainer";

export { loadTrainerConfig, type TrainerConfig } from "./config";
export * from "./executor";
export * from "./trainer";
export { frameChunks } from "../../shared/chunks";
export { parseRoundOrder, type RoundOrder } from "./round";

/** Container entry: configuration from the environment (validated, naming what is missing), runs until SIGTERM. */
export async function run(env: Env = process.env): Promise<void> {
  const config = loadTrainerConfig(env);
  const client = await createModuleClient(config.connection);
  const trainer = await startTrainer({
    client,
    deviceId: config.connection.deviceId,
    dataDir: config.dataDir,
    maxChunkBytes: config.maxChunkBytes,
    // Secure aggregation's identity key: Key Vault when FLOTILLA_KEYVAULT_URL is set, else the key file in
    // FLOTILLA_KEY_DIR (azure/keyvault-key-provider.ts).
    keys: keyProviderFromEnv(env as NodeJS.ProcessEnv),
  });
  console.log(`[info] trainer: running (data ${config.dataDir})`);
  await runUntilSignal("trainer", () => trainer.stop(), client);
}

if (require.main === module) {
  run().then(
    () => process.exit(0),
    (e: unknown) => {
      console.error(`[error] trainer: ${errorText(e)}`);
      process.exit(1);
    },
  );
}
