import { createModuleClient, errorText, runUntilSignal, type Env } from "../../shared/module-client";
import { loadQuantizerConfig } from "./config";
import { startQuantizer } from "./quantizer";

export { DEFAULT_STATE_DIR, loadQuantizerConfig, type QuantizerConfig } from "./config";
export * from "./quantizer";

/** Container entry: configuration from the environment (validated, naming what is missing), runs until SIGTERM. */
export async function run(env: Env = process.env): Promise<void> {
  const config = loadQuantizerConfig(env);
  const client = await createModuleClient(config.connection);
  const quantizer = await startQuantizer({
    client,
    deviceId: config.connection.deviceId,
    stateDir: config.stateDir,
    maxChunkBytes: config.maxChunkBytes,
    maxBytes: config.maxBytes,
  });
  console.log(`[info] quantizer: running (residuals in ${config.stateDir})`);
  await runUntilSignal("quantizer", () => quantizer.stop(), client);
}

if (require.main === module) {
  run().then(
    () => process.exit(0),
    (e: unknown) => {
      console.error(`[error] quantizer: ${errorText(e)}`);
      process.exit(1);
    },
  );
}
