/**
 * Protocol overhead of the IoT Hub path (local/stack/bench-stack.ts, also `flotilla bench stack`): round wall time
 * (the Function's round open → close) minus the round's training critical path, medians over 4 rounds, for fleets
 * of 10 and 100 devices (or those given) with every device taking part, and the peak resident memory of the whole
 * local stack. Each run starts from fresh state.
 *
 *   node dist/scripts/bench-stack.js [devices ...]       (default: 10 100)
 *
 * Writes bench-out/stack-<devices>.json (and the run's state under bench-out/stack-<devices>/).
 */
import * as fs from "node:fs";
import { positiveInt, SIM_LIMITS } from "../local/sim/config";
import { errorCode, errorMessage } from "../core/errors";
import { benchStack } from "../local/stack/bench-stack";

async function main(): Promise<void> {
  const counts = process.argv.slice(2).map((c) => positiveInt("devices", c, SIM_LIMITS.devices));
  for (const devices of counts.length ? counts : [10, 100]) {
    const r = await benchStack({
      devices,
      rounds: 4,
      out: `bench-out/stack-${devices}`,
      onProgress: (l) => console.error(l),
    });
    fs.mkdirSync("bench-out", { recursive: true });
    fs.writeFileSync(`bench-out/stack-${devices}.json`, JSON.stringify(r, null, 2));
    console.log(JSON.stringify(r));
  }
}

main().catch((e) => {
  console.error(`bench-stack: ${errorCode(e)}: ${errorMessage(e)}`);
  process.exit(1);
});
