import { createModuleClient, errorText, runUntilSignal, type Env } from "../../shared/module-client";
import { loadProfilerConfig } from "./config";
import { startProfiler } from "./profiler";

export { loadProfilerConfig, type ProfilerConfig } from "./config";
export * from "./profiler";

/** Container entry: configuration from the environment (validated, naming what is missing), runs until SIGTERM. */
export async function run(env: Env = process.env): Promise<void> {
  const config = loadProfilerConfig(env);
  const client = await createModuleClient(config.connection);
  const profiler = await startProfiler({
    client,
    dataDir: config.dataDir,
    benchSeconds: config.benchSeconds,
  });
  console.log("[info] profiler: running");
  await runUntilSignal("profiler", () => profiler.stop(), client);
}

if (require.main === module) {
  run().then(
    () => process.exit(0),
    (e: unknown) => {
      console.error(`[error] profiler: ${errorText(e)}`);
      process.exit(1);
    },
  );
}
