/**
 * Child process for properties.test.ts: an update-queue in `dir` whose module twin says the link is metered
 * (meteredMaxUploadBytes METERED_CHILD_LIMIT) is given a big and a small update; it prints `sent` once the small one
 * went out (the big one deferred) and then waits to be killed. Run with no arguments (e.g. picked up by a test
 * runner) it does nothing.
 */
import { writeSync } from "node:fs";
import { startUpdateQueue } from "../../../modules/update-queue/src/main";
import { FakeModuleClient } from "./fake-client";
import { METERED_CHILD_LIMIT, meteredChildFrames } from "./metered-child-frames";

const [dir] = process.argv.slice(2);
if (dir !== undefined) {
  void (async () => {
    const client = new FakeModuleClient();
    client.twin.properties.desired.meteredLink = true;
    client.twin.properties.desired.meteredMaxUploadBytes = METERED_CHILD_LIMIT;
    const queue = await startUpdateQueue({ client, dir, log: () => {} });
    const { big, small } = meteredChildFrames();
    client.deliver("updates", big.frame);
    client.deliver("updates", small.frame);
    const wait = setInterval(() => {
      if (client.outputs.length > 0 && queue.status().awaitingAck === 1) {
        clearInterval(wait);
        writeSync(1, "sent\n");
        setInterval(() => undefined, 60_000); // until killed
      }
    }, 5);
  })();
}
